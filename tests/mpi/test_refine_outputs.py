"""`lorefine refine` writes the documented output folder, and each module's STAR file means to a
reconstruction program what lorefine meant: rebuilding it gives the module map that lorefine wrote."""

import csv
import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from mpi_jobs import make_run, run

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.mrc import read_map
from lorefine_mpi.io.star import read_star

MODULES = ("large", "small")
PER_MODULE = ("map.mrc", "half1.mrc", "half2.mrc", "mask.mrc", "particles.star", "fsc.json", "fsc.png", "fsc_consensus.json",
              "fsc_before_after.png", "postprocess.mrc", "postprocess_masked.mrc", "postprocess.json", "postprocess.star", "postprocess_fsc.png",
              "postprocess_guinier.png", "locres.mrc", "locres.json", "locres_histogram.png", "locres_slices.png", "pose_change.png",
              "uncertainty.png")
MOTION = ("motion.csv", "motion.json", "relative_motion.png", "pca.png", "pc1_frame1.mrc", "pc1_frame5.mrc", "pc2_frame3.mrc")


def masked_correlation(a, b, mask):
    a, b = (np.float64(a) * mask).ravel(), (np.float64(b) * mask).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    folder = make_run(tmp_path_factory.mktemp("outputs"), n_particles=200, unit_size=16, postprocess={"motion_components": 2})
    done = run(1, "refine", str(folder / "config.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    (folder / "out" / "stdout.txt").write_text(done.stdout)
    return folder / "out"


def test_output_folder_holds_every_documented_file(refined):
    for module in MODULES:
        for name in PER_MODULE:
            assert (refined / module / name).stat().st_size > 0, f"{module}/{name}"
    for name in ("combined.mrc", "results.h5", "config.yaml", "lorefine.log", "summary.json", "timings.json", "report.html",
                 "consensus/half1.mrc", "consensus/half2.mrc", "bodies.star", "note.txt"):
        assert (refined / name).stat().st_size > 0, name
    assert (refined / "RELION_JOB_EXIT_SUCCESS").is_file() and not (refined / "RELION_JOB_EXIT_FAILURE").exists()
    assert "Pose uncertainty" in (refined / "report.html").read_text()  # each module's histogram of its spreads
    for name in MOTION:
        assert (refined / "motion" / name).stat().st_size > 0, name
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


def test_refine_ends_with_the_table_of_what_improved_and_the_report(refined):
    """The last lines on stdout: one row per module (resolution before -> after, B-factor, median pose change), the report."""
    lines = (refined / "stdout.txt").read_text().strip().splitlines()
    assert lines[-1] == f"report: {refined / 'report.html'}"
    summary = json.loads((refined / "summary.json").read_text())
    for module, line in zip(MODULES, lines[-3:-1]):
        m = summary["modules"][module]
        assert line.split()[0] == module and "→" in line
        assert f"{m['resolution_before_angstrom']:.2f} Å" in line and f"{m['resolution_after_angstrom']:.2f} Å" in line
        assert f"{m['median_pose_change_deg']:.2f}°" in line


def test_motion_in_results_and_csv_matches_the_final_poses(refined):
    """results.h5 /motion holds each module's rotation away from its consensus pose, as the final poses say;
    motion.csv has one row per particle with the same angles."""
    consensus = read_star(refined.parent / "particles.star")
    a0 = rotations.euler_to_matrix(consensus.rot_rad, consensus.tilt_rad, consensus.psi_rad)
    with h5py.File(refined / "results.h5", "r") as f:
        rotation = f["motion/rotation_deg"][...]
        assert json.loads(f["motion"].attrs["module_names"]) == list(MODULES)
        for k, module in enumerate(MODULES):
            q = np.swapaxes(a0, -1, -2) @ f[f"iteration_01/{module}/matrix"][...]
            np.testing.assert_allclose(rotation[k], np.rad2deg(rotations.rotation_vector(q)), atol=1e-9)
        assert f["motion/pca_scores"].shape == (200, 6)
    with open(refined / "motion" / "motion.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 200 and rows[0]["rlnImageName"] == consensus.image_name[0]
    np.testing.assert_allclose([float(r["small_angle_deg"]) for r in rows], np.linalg.norm(rotation[1], axis=-1), rtol=1e-5, atol=1e-6)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_chromium_with_every_image(refined, tmp_path):
    """Headless Chromium loads report.html (a copy with a script that counts the decoded images after load)."""
    page = (refined / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained, no scripts
    probe = ("<script>window.addEventListener('load', () => { const all = [...document.images]; "
             "const ok = all.filter(i => i.complete && i.naturalWidth > 0).length; "
             "document.body.setAttribute('data-images', ok + '/' + all.length); });</script>")
    copy = tmp_path / "report.html"
    copy.write_text(page.replace("</body>", probe + "</body>"))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'data-images="(\d+)/(\d+)"', done.stdout)
    assert found, done.stderr[-2000:]
    loaded, total = int(found.group(1)), int(found.group(2))
    assert total == page.count("<img ") and total >= 12 and loaded == total
