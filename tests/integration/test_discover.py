"""`lorefine discover` end to end on small simulated sets (box 40, 300 particles): a rigid set gives one module, two
modules moving independently give two (their masks matching the true ones), the outputs are ready for refine, and a
bad config key is one line with exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from lorefine_mpi.discover.probes import hard_labels
from lorefine_mpi.io import mrc

LOREFINE = [sys.executable, "-m", "lorefine_mpi.cli.main"]
SEARCH = {"strategy": "separate", "cone_half_angle_deg": 6, "angular_step_deg": 2, "psi_half_range_deg": 4, "psi_step_deg": 2,
          "max_shift_px": 3, "shift_step_px": 1, "n_random_angles": 4, "prior_sigma_deg": 4, "prior_sigma_px": 1.5,
          "max_resolution_angstrom": 10}


def lorefine(*args):
    return subprocess.run(LOREFINE + [str(a) for a in args], capture_output=True, text=True, timeout=900)


def simulated(folder, sigma_rot_deg, sigma_shift_px):
    cfg = {"output": "data", "seed": 4, "n_particles": 300, "box": 40, "pixel_size_angstrom": 4.0, "origin_sigma_px": 1.0,
           "motion": {"sigma_rot_deg": sigma_rot_deg, "sigma_shift_px": sigma_shift_px}, "noise": {"snr": 1.0}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sim.yaml").write_text(yaml.safe_dump(cfg))
    done = lorefine("simulate", folder / "sim.yaml")
    assert done.returncode == 0, done.stderr
    return folder / "data"


def discovered(folder, data, **discover):
    cfg = {"particles": str(data / "particles.star"), "consensus_map": str(data / "consensus.mrc"), "mask": str(data / "mask_whole.mrc"),
           "output": str(folder / "discover"), "seed": 2, "project_dir": str(data), "search": SEARCH,
           "parallel": {"class_spacing_deg": 30}, "discover": {"probes": 6} | discover}
    (folder / "discover.yaml").write_text(yaml.safe_dump(cfg))
    done = lorefine("discover", folder / "discover.yaml")
    assert done.returncode == 0, done.stderr
    return folder / "discover", json.loads((folder / "discover" / "discover.json").read_text())


@pytest.fixture(scope="module")
def two_modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    data = simulated(folder, 4.0, 1.5)
    return data, *discovered(folder, data)


def test_two_modules_moving_independently_give_two(two_modules):
    data, out, summary = two_modules
    assert summary["modules"] == 2, summary
    found = [mrc.read_map(out / m)[0] for m in summary["masks"]]
    true = [mrc.read_map(data / f"mask_module_{k}.mrc")[0] for k in (1, 2)]
    f, t = hard_labels(found), hard_labels(true)
    dice = np.array([[2 * ((f == i) & (t == j)).sum() / ((f == i).sum() + (t == j).sum()) for j in range(2)] for i in range(2)])
    assert max(dice[0, 0] + dice[1, 1], dice[0, 1] + dice[1, 0]) / 2 > 0.8, dice
    c = np.array(summary["coherence"])
    same = np.equal.outer(summary["probe_module"], summary["probe_module"]) & ~np.eye(len(c), dtype=bool)
    assert c[same].mean() > summary["threshold"] > c[~np.equal.outer(summary["probe_module"], summary["probe_module"])].mean()


def test_outputs_are_ready_to_refine(two_modules):
    data, out, summary = two_modules
    for name in ("lorefine.yaml", "bodies.star", "report.png", "masks/module1.mrc", "masks/module2.mrc"):
        assert (out / name).is_file(), name
    refine = yaml.safe_load((out / "lorefine.yaml").read_text())
    assert [m["name"] for m in refine["modules"]] == ["module1", "module2"]
    check = lorefine("check", out / "lorefine.yaml")
    assert check.returncode == 0, check.stderr
    masks = [mrc.read_map(out / m)[0] for m in summary["masks"]]
    assert 0.0 <= min(m.min() for m in masks) and sum(masks).max() <= 1.0 + 1e-5
    assert "rlnBodyMaskName" in (out / "bodies.star").read_text()


def test_continue_takes_up_the_recorded_searches(two_modules):
    data, out, summary = two_modules
    again = lorefine("discover", out.parent / "discover.yaml", "--continue")
    assert again.returncode == 0, again.stderr
    assert "particles (100%)" not in again.stderr  # no probe searched again: every unit is in the checkpoint
    assert json.loads((out / "discover.json").read_text()) == summary
    fresh = lorefine("discover", out.parent / "discover.yaml")  # without --continue the folder is refused, in one line
    assert fresh.returncode == 2 and "is not empty" in fresh.stderr and "--continue" in fresh.stderr


def test_a_rigid_set_gives_one_module(tmp_path):
    data = simulated(tmp_path, 0.0, 0.0)
    out, summary = discovered(tmp_path, data)
    assert summary["modules"] == 1, summary
    assert not (out / "bodies.star").exists()  # RELION multi-body needs two bodies
    assert yaml.safe_load((out / "lorefine.yaml").read_text())["modules"][0]["mask"] == "masks/module1.mrc"


def test_a_bad_config_key_is_one_line_and_status_2(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"particles": "p.star", "consensus_map": "c.mrc", "output": "out",
                                                        "discover": {"probs": 6}}))
    done = lorefine("discover", tmp_path / "bad.yaml")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["lorefine: error: discover.probs: unknown key (did you mean 'probes'?)"]
    (tmp_path / "mods.yaml").write_text(yaml.safe_dump({"particles": "p.star", "consensus_map": "c.mrc", "output": "out", "modules": "whole"}))
    done = lorefine("discover", tmp_path / "mods.yaml")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "modules: not a discover key" in done.stderr
