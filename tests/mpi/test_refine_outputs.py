"""`lorefine refine` writes the documented output folder, and each module's STAR file means to a
reconstruction program what lorefine meant: rebuilding it gives the module map that lorefine wrote."""

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.mrc import read_map
from lorefine_mpi.io.star import read_star
from mpi_jobs import make_run, run

MODULES = ("large", "small")
PER_MODULE = ("map.mrc", "half1.mrc", "half2.mrc", "mask.mrc", "particles.star", "fsc.json", "fsc.png")


def masked_correlation(a, b, mask):
    a, b = (np.float64(a) * mask).ravel(), (np.float64(b) * mask).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    folder = make_run(tmp_path_factory.mktemp("outputs"), n_particles=200, unit_size=16)
    done = run(1, "refine", str(folder / "config.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "out"


def test_output_folder_holds_every_documented_file(refined):
    for module in MODULES:
        for name in PER_MODULE:
            assert (refined / module / name).stat().st_size > 0, f"{module}/{name}"
    for name in ("combined.mrc", "results.h5", "config.yaml", "lorefine.log"):
        assert (refined / name).stat().st_size > 0, name
    assert not list(refined.rglob("*.tmp*")), "a temporary file was left behind"
    with h5py.File(refined / "results.h5", "r") as f:
        assert yaml.safe_load(f.attrs["config_yaml"])["seed"] == 3
        assert "refine" in f.attrs["command_line"] and f.attrs["lorefine_version"]
    with open(refined / "large" / "fsc.json") as fh:
        assert fh.read().strip().startswith("{")
    table = read_star(refined / "small" / "particles.star")
    assert len(table) == 200 and (refined.parent / table.image_name[0].split("@")[1]).exists()  # from the project directory


@pytest.mark.parametrize("module", MODULES)
def test_lorefine_reconstruct_of_a_module_star_rebuilds_its_map(refined, module, tmp_path):
    out = tmp_path / "rebuilt.mrc"
    star = refined / module / "particles.star"
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "reconstruct", "--particles", str(star), "--out", str(out),
                           "--no-ctf"], capture_output=True, text=True, cwd=refined.parent)  # run from the project directory
    assert done.returncode == 0, done.stderr
    written, voxel = read_map(refined / module / "map.mrc")
    rebuilt, rebuilt_voxel = read_map(out)
    mask, _ = read_map(refined / module / "mask.mrc")
    assert rebuilt_voxel == pytest.approx(voxel)
    assert masked_correlation(written, rebuilt, mask) >= 0.995


@pytest.mark.skipif(shutil.which("relion_reconstruct") is None, reason="RELION is not installed")
@pytest.mark.parametrize("module", MODULES)
def test_relion_reconstruct_of_a_module_star_rebuilds_its_map(refined, module, tmp_path):
    """RELION resolves image names against its working directory, the project directory; lorefine writes them so."""
    out = tmp_path / "relion.mrc"
    done = subprocess.run(["relion_reconstruct", "--i", f"out/{module}/particles.star", "--o", str(out)],
                          capture_output=True, text=True, cwd=refined.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    written, _ = read_map(refined / module / "map.mrc")
    relion, _ = read_map(out)
    mask, _ = read_map(refined / module / "mask.mrc")
    assert masked_correlation(written, relion, mask) >= 0.99


def test_final_poses_are_the_search_poses_with_the_mean_motion_taken_out(refined):
    consensus = read_star(refined.parent / "particles.star")
    a0 = consensus.matrices
    with h5py.File(refined / "results.h5", "r") as f:
        for module in MODULES:
            g = f[f"iteration_01/{module}"]
            search, final = g["search_matrix"][...], g["matrix"][...]
            removed = rotations.from_rotation_vector(np.deg2rad(g.attrs["mean_rotation_removed_deg"]))
            np.testing.assert_allclose(final, search @ removed.T, atol=1e-12)
            assert 0 < np.linalg.norm(g.attrs["mean_rotation_removed_deg"]) < 2.0
            np.testing.assert_allclose(rotations.rotation_vector(np.swapaxes(a0, -1, -2) @ final).mean(axis=0), 0.0, atol=1e-12)
            star = read_star(refined / module / "particles.star")
            np.testing.assert_allclose(star.matrices, final, atol=1e-5)
            np.testing.assert_allclose(star.origin_px, g["origin_px"][...], atol=1e-4)
