"""`lorefine init`: a config for a RELION project from a Refine3D job folder (built here from tests/data as RELION lays
one out) and masks or a bodies file; `lorefine check` accepts what it writes, from the project root or elsewhere."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lorefine_mpi.config.from_relion import angular_step_for_sigma, module_names, window_for_sigma
from lorefine_mpi.io.mrc import read_map, write_map
from lorefine_mpi.io.star import read_star, write_star

DATA = Path(__file__).resolve().parents[1] / "data"
STACK = "Extract/job005/Particles/Micrographs/particles.mrcs"


def lorefine(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def project(tmp_path):
    """A RELION project: Extract/, a finished Refine3D/job010/ (run_data.star naming the stack from the project root,
    run_class001.mrc, the unfiltered half maps), two MaskCreate jobs."""
    for folder in ("Extract/job005/Particles/Micrographs", "Refine3D/job010", "MaskCreate/job020", "MaskCreate/job021"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy(DATA / "recon_ctf.mrcs", tmp_path / STACK)
    table = read_star(DATA / "recon_ctf.star").subset(slice(0, 40))
    write_star(tmp_path / "Refine3D/job010/run_data.star", table, image_name=[f"{i + 1:06d}@{STACK}" for i in table.image_index])
    whole, voxel = read_map(DATA / "phantom_whole.mrc")
    noise = np.random.default_rng(0).normal(0.0, 0.05 * whole.std(), (2, *whole.shape))
    for name, volume in (("run_class001.mrc", whole), ("run_half1_class001_unfil.mrc", whole + noise[0]),
                         ("run_half2_class001_unfil.mrc", whole + noise[1])):  # independent halves: not the same map
        write_map(tmp_path / "Refine3D/job010" / name, volume.astype(np.float32), voxel)
    shutil.copy(DATA / "phantom_mask_module_1.mrc", tmp_path / "MaskCreate/job020/mask.mrc")
    shutil.copy(DATA / "phantom_mask_module_2.mrc", tmp_path / "MaskCreate/job021/mask.mrc")
    return tmp_path


def test_the_window_is_three_sigma_with_the_sigma_as_prior():
    assert window_for_sigma(1.67, 4.0, 2.0) == {"cone_half_angle_deg": 5.01, "psi_half_range_deg": 5.01, "prior_sigma_deg": 1.67,
                                                "max_shift_px": 6, "prior_sigma_px": 2.0}
    assert window_for_sigma(None, None, 1.0) == {}
    assert angular_step_for_sigma(10.0) == 2.0 and angular_step_for_sigma(1.67) == 1.67 and angular_step_for_sigma(0.2) == 0.5
    assert window_for_sigma(None, 0.1, 1.0)["max_shift_px"] == 1  # at least one pixel
    assert module_names(["MaskCreate/job020/mask.mrc", "MaskCreate/job021/mask.mrc"]) == ["job020", "job021"]
    assert module_names(["head.mrc", "body.mrc"]) == ["head", "body"]


def test_init_from_masks_writes_a_config_check_accepts(project):
    done = lorefine("init", "Refine3D/job010", "--masks", "MaskCreate/job020/mask.mrc", "MaskCreate/job021/mask.mrc", "--sigma-deg", "1.67",
                    "--sigma-angst", "8", cwd=project)
    assert done.returncode == 0, done.stderr
    text = (project / "lorefine.yaml").read_text()
    assert text.startswith("# lorefine config for the RELION Refine3D job Refine3D/job010")
    cfg = yaml.safe_load(text)
    assert cfg["particles"] == "Refine3D/job010/run_data.star" and cfg["consensus_map"] == "Refine3D/job010/run_class001.mrc"
    assert cfg["consensus_half_maps"] == ["Refine3D/job010/run_half1_class001_unfil.mrc", "Refine3D/job010/run_half2_class001_unfil.mrc"]
    assert cfg["project_dir"] == "." and cfg["output"] == "LoRefine/job010/"
    assert [m["name"] for m in cfg["modules"]] == ["job020", "job021"]
    assert cfg["modules"][0] | {} == {"name": "job020", "mask": "MaskCreate/job020/mask.mrc", "cone_half_angle_deg": 5.01, "psi_half_range_deg": 5.01,
                                      "prior_sigma_deg": 1.67, "max_shift_px": 6, "prior_sigma_px": 2.0}  # 3 × 8 Å / 4 Å/px
    assert cfg["search"] == {"angular_step_deg": 1.67, "psi_step_deg": 1.67}
    check = lorefine("check", "lorefine.yaml", cwd=project)
    assert check.returncode == 0, check.stderr
    assert "job020: mask volume" in check.stdout and "cone 5.01°" in check.stdout
    again = lorefine("init", "Refine3D/job010", "--masks", "MaskCreate/job020/mask.mrc", cwd=project)
    assert again.returncode == 2 and again.stderr.startswith("lorefine: error: lorefine.yaml: exists already")


def test_init_from_a_bodies_file_in_a_subfolder_is_read_from_anywhere(project, tmp_path_factory):
    (project / "MultiBody").mkdir()
    (project / "MultiBody/bodies.star").write_text(
        "data_\nloop_\n_rlnBodyMaskName\n_rlnBodyRotateRelativeTo\n_rlnBodySigmaAngles\n_rlnBodySigmaOffsetAngst\n"
        "MaskCreate/job020/mask.mrc 2 10 4\nMaskCreate/job021/mask.mrc 1 5 2\n")
    (project / "LoRefine").mkdir()
    done = lorefine("init", "Refine3D/job010", "--bodies", "MultiBody/bodies.star", "--config", "LoRefine/mb.yaml", cwd=project)
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load((project / "LoRefine/mb.yaml").read_text())
    assert cfg["project_dir"] == ".." and cfg["particles"] == "../Refine3D/job010/run_data.star"
    body1, body2 = cfg["modules"]
    assert body1["name"] == "body1" and body1["mask"] == "../MaskCreate/job020/mask.mrc" and body1["rotate_relative_to"] == "body2"
    assert body1["cone_half_angle_deg"] == 30 and body1["prior_sigma_deg"] == 10 and body1["max_shift_px"] == 3
    assert body2["cone_half_angle_deg"] == 15 and body2["max_shift_px"] == 2 and body2["rotate_relative_to"] == "body1"
    assert cfg["search"] == {"angular_step_deg": 2, "psi_step_deg": 2}
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    check = lorefine("check", project / "LoRefine/mb.yaml", cwd=elsewhere)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("args,fragment", [
    (["Refine3D/job999", "--masks", "MaskCreate/job020/mask.mrc"], "Refine3D/job999: not a folder"),
    (["MaskCreate/job020", "--masks", "MaskCreate/job020/mask.mrc"], "run_data.star: not found; expected a finished Refine3D job"),
    (["Refine3D/job010"], "expected the modules' masks (--masks"),
    (["Refine3D/job010", "--masks", "MaskCreate/job020/nomask.mrc"], "nomask.mrc: mask not found"),
    (["Refine3D/job010", "--masks", "MaskCreate/job020/mask.mrc", "--sigma-deg", "-1"], "--sigma-deg: expected a σ in (0, 30]"),
    (["Refine3D/job010", "--masks", "MaskCreate/job020/mask.mrc", "MaskCreate/job021/mask.mrc", "--names", "a"], "--names: expected 2 names"),
])
def test_init_mistakes_are_one_line_and_nothing_is_written(project, args, fragment):
    done = lorefine("init", *args, cwd=project)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and fragment in done.stderr, done.stderr
    assert not (project / "lorefine.yaml").exists()
