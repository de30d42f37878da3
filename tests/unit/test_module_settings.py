"""Per-module search settings: from the YAML list and from a RELION multi-body bodies STAR file."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lorefine_mpi.config import config_to_dict, load_config
from lorefine_mpi.config.schema import config_from_dict
from lorefine_mpi.errors import InputError
from lorefine_mpi.refine.engine import prior_widths, search_settings

DATA = Path(__file__).resolve().parents[1] / "data"

# RELION 3.1's documented bodies file (relion_refine --multibody_masks); 3.0's gives the offset σ in px
BODIES_31 = """
data_
loop_
_rlnBodyMaskName
_rlnBodyRotateRelativeTo
_rlnBodySigmaAngles
_rlnBodySigmaOffsetAngst
MaskCreate/job020/mask.mrc 2 10 8
MaskCreate/job021/mask.mrc 1 5 4
"""
BODIES_30 = """
data_
loop_
_rlnBodyMaskName
_rlnBodyRotateRelativeTo
_rlnBodySigmaAngles
_rlnBodySigmaOffset
MaskCreate/job020/mask.mrc 2 10 2
MaskCreate/job021/mask.mrc 1 5 1.5
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    for job, k in (("job020", 1), ("job021", 2)):
        (tmp_path / "MaskCreate" / job).mkdir(parents=True)
        shutil.copy(DATA / f"phantom_mask_module_{k}.mrc", tmp_path / "MaskCreate" / job / "mask.mrc")
    shutil.copy(DATA / "phantom_whole.mrc", tmp_path / "run_class001.mrc")  # 4 Å/px
    monkeypatch.chdir(tmp_path)  # the project directory: RELION runs here
    return tmp_path


def config(modules, **extra):
    return {"particles": "run_data.star", "consensus_map": "run_class001.mrc", "modules": modules, "output": "out"} | extra


@pytest.mark.parametrize("text,offset_px", [(BODIES_31, (2.0, 1.0)), (BODIES_30, (2.0, 1.5))], ids=["relion31", "relion30"])
def test_a_bodies_star_gives_one_module_per_body_with_its_sigmas(project, text, offset_px):
    (project / "MultiBody").mkdir()
    (project / "MultiBody" / "bodies.star").write_text(text)
    cfg = config_from_dict(config("MultiBody/bodies.star"), project)
    assert [m.name for m in cfg.modules] == ["body1", "body2"]
    assert [m.mask for m in cfg.modules] == [str(project / "MaskCreate" / j / "mask.mrc") for j in ("job020", "job021")]
    assert [m.prior_sigma_deg for m in cfg.modules] == [10.0, 5.0]
    assert tuple(m.prior_sigma_px for m in cfg.modules) == pytest.approx(offset_px)  # Å / 4 Å/px for 3.1
    assert [m.rotate_relative_to for m in cfg.modules] == ["body2", "body1"]
    assert [m.cone_half_angle_deg for m in cfg.modules] == [None, None]  # the search window stays the global one
    listed = config_to_dict(cfg)["modules"]  # the resolved config spells every body out
    assert listed[1] == {"name": "body2", "mask": cfg.modules[1].mask, "prior_sigma_deg": 5.0,
                         "prior_sigma_px": pytest.approx(offset_px[1]), "rotate_relative_to": "body1"}
    assert config_from_dict(config(listed), project).modules == cfg.modules


def test_module_values_override_the_global_search_and_feed_its_settings(project):
    cfg = config_from_dict(config([
        {"name": "a", "mask": "MaskCreate/job020/mask.mrc"},
        {"name": "b", "mask": "MaskCreate/job021/mask.mrc", "cone_half_angle_deg": 4, "psi_half_range_deg": 4, "max_shift_px": 2,
         "prior_sigma_deg": 0.5, "centre_px": [1, -2, 3.5]},
    ], search={"prior_sigma_px": 1.0}), project)
    a, b = cfg.modules
    assert a.search(cfg.search) == cfg.search
    own = b.search(cfg.search)
    assert (own.cone_half_angle_deg, own.psi_half_range_deg, own.max_shift_px) == (4.0, 4.0, 2.0)
    rot, shift = prior_widths(own)
    assert (rot.sigma, shift.sigma) == (pytest.approx(np.deg2rad(0.5)), 1.0)  # the module's angle σ, the global shift σ
    mask = np.zeros((48, 48, 48), np.float32)
    mask[20:28, 20:28, 20:28] = 1
    settings_a = search_settings(cfg, mask, np.zeros(3), 48, module=a)
    settings_b = search_settings(cfg, mask, np.zeros(3), 48, module=b)
    assert settings_a.cone_half_angle_rad == pytest.approx(np.deg2rad(10)) and settings_a.psi_half_steps == 3
    assert settings_b.cone_half_angle_rad == pytest.approx(np.deg2rad(4)) and settings_b.psi_half_steps == 2
    assert settings_b.max_shift_steps == 2 and settings_b.prior_sigma_rad == pytest.approx(np.deg2rad(0.5))
    assert settings_a.prior_sigma_rad is None and [w.learned for w in prior_widths(a.search(cfg.search))] == [True, False]  # auto: learned per stage
    assert [w.learned for w in prior_widths(own)] == [False, False]
    assert b.centre_px == (1.0, -2.0, 3.5)


@pytest.mark.parametrize("modules,fragment", [
    ([{"name": "a", "mask": "m.mrc", "prior_sigma_deg": -1}], "modules[0].prior_sigma_deg: must be auto, null or a number in (0, 90]"),
    ([{"name": "a", "mask": "m.mrc", "cone_half_angle_deg": 1}], "modules (a).cone_half_angle_deg: must be >= search.angular_step_deg"),
    ([{"name": "a", "mask": "m.mrc", "centre_px": [1, 2]}], "modules[0].centre_px: expected [x, y, z]"),
    ([{"name": "a", "mask": "m.mrc", "cone": 3}], "modules[0].cone: unknown key (did you mean 'cone_half_angle_deg'?)"),
    ([{"name": "a", "mask": "m.mrc", "rotate_relative_to": "a"}], "modules[0].rotate_relative_to: expected the name of another module"),
])
def test_bad_module_settings_are_one_line_errors(project, modules, fragment):
    with pytest.raises(InputError) as error:
        config_from_dict(config(modules), project)
    assert fragment in str(error.value)


@pytest.mark.parametrize("text,fragment", [
    ("data_\nloop_\n_rlnBodyMask\nx.mrc\n", "not a RELION bodies file"),
    (BODIES_31.replace("2 10 8", "3 10 8"), "body 1: _rlnBodyRotateRelativeTo: expected the number of another body (1-2), got '3'"),
    (BODIES_31.replace("2 10 8", "2 100 8"), "body 1: _rlnBodySigmaAngles: must be auto, null or a number in (0, 90], got 100"),
    (BODIES_31.replace("1 5 4", "1 x 4"), "body 2: _rlnBodySigmaAngles: expected a number, got 'x'"),
])
def test_bad_bodies_files_are_one_line_errors(project, text, fragment):
    (project / "bodies.star").write_text(text)
    with pytest.raises(InputError) as error:
        config_from_dict(config("bodies.star"), project)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_project_dir_defaults_to_the_current_directory_and_resolves_like_the_config_paths(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("configs")
    (elsewhere / "a.yaml").write_text(yaml.safe_dump(config("whole")))
    assert load_config(elsewhere / "a.yaml").project_dir == str(project)
    (elsewhere / "b.yaml").write_text(yaml.safe_dump(config("whole", project_dir="..")))
    assert load_config(elsewhere / "b.yaml").project_dir == str(elsewhere.parent)
