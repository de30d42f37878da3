"""`lorefine refine` with a CTF, against the ground truth of a simulated set: 60 noise-free particles of the
two-module phantom (box 48, 4 Å/px), each with its own astigmatic CTF (1–3 µm, 800 Å of astigmatism); the
large module refined against the true, unmoved complex. The search's references, the rest's projection
and the back-projection all use each particle's CTF: the module's origins and its map come close to the
truth. The same run told to ignore the CTF (score.ctf: false) misses every threshold, so a CTF used for
the wrong particle, or not at all, would fail this test. Thresholds: what the code achieved when this was
written, with a margin."""

import numpy as np
import pytest
import yaml
from runs import run

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.mrc import read_map
from lorefine_mpi.io.star import read_star

SIMULATION = {
    "output": "data", "seed": 5, "n_particles": 60, "box": 48, "pixel_size_angstrom": 4.0, "origin_sigma_px": 1.0,
    "source": "phantom", "phantom": {"seed": 11}, "motion": {"sigma_rot_deg": 1.67, "sigma_shift_px": 1.0}, "noise": {"snr": None},
    "ctf": {"defocus_min_um": 1.0, "defocus_max_um": 3.0, "n_defocus_groups": 4, "astigmatism_angstrom": 800, "voltage_kv": 300,
            "cs_mm": 2.7, "amplitude_contrast": 0.1},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctf")
    (folder / "simulate.yaml").write_text(yaml.safe_dump(SIMULATION))
    done = run("simulate", folder / "simulate.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    return folder / "data"


def refine(data, ctf: bool):
    cfg = yaml.safe_load((data / "lorefine.yaml").read_text())
    cfg["search"].update(cone_half_angle_deg=4, psi_half_range_deg=4, max_shift_px=3)
    cfg.update(modules=cfg["modules"][:1], consensus_map="gt_whole.mrc", output=f"out_ctf_{ctf}", reconstruction={"gridding_iterations": 0}, iterations=1,
               postprocess={"enabled": False})
    cfg["score"]["ctf"] = ctf
    config = data / f"ctf_{ctf}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = run("refine", config)
    assert done.returncode == 0, done.stderr[-2000:]
    truth, found = read_star(data / "gt_module_1.star"), read_star(data / f"out_ctf_{ctf}" / "large" / "particles.star")
    angle = np.rad2deg(rotations.geodesic_angle(*(rotations.euler_to_matrix(t.rot_rad, t.tilt_rad, t.psi_rad) for t in (found, truth))))
    origin = np.linalg.norm(found.origin_px - truth.origin_px, axis=1)
    mask = read_map(data / "mask_module_1.mrc")[0]
    a, b = (read_map(data / f"out_ctf_{ctf}" / "large" / "map.mrc")[0] * mask).ravel(), (read_map(data / "gt_module_1.mrc")[0] * mask).ravel()
    a, b = a - a.mean(), b - b.mean()
    return np.median(angle), np.median(origin), np.percentile(origin, 90), float(a @ b / np.sqrt((a @ a) * (b @ b)))


def close_to_the_truth(angle_deg, origin_px, origin_90_px, map_correlation):
    """Achieved (3c91c59's search and reconstruction) with the CTF: 1.29°, 0.17 px, 0.40 px, 0.949 (consensus
    poses: 0.97°, 1.39 px, 2.06 px; the consensus map: 0.800); ignoring it: 2.20°, 0.31 px, 1.02 px, 0.600."""
    return angle_deg <= 1.6 and origin_px <= 0.25 and origin_90_px <= 0.6 and map_correlation >= 0.92


def test_refine_with_each_particles_ctf_finds_the_modules_origin_and_map(dataset):
    found = refine(dataset, ctf=True)
    print("with the CTF: median angle %.2f°, origin %.2f px (90%%: %.2f px), map correlation %.3f" % found)
    assert close_to_the_truth(*found), found


def test_the_same_run_ignoring_the_ctf_misses_the_truth(dataset):
    found = refine(dataset, ctf=False)
    print("CTF ignored: median angle %.2f°, origin %.2f px (90%%: %.2f px), map correlation %.3f" % found)
    assert not close_to_the_truth(*found), found
    assert found[3] < 0.8


def test_the_search_band_is_the_same_worked_through_in_parts_of_any_size(dataset, monkeypatch):
    """`RefineEngine.search_band` makes the sample's images, CTFs and projections `BAND_PART_BYTES` at a time and sums
    them in the sample's order: parts of one image and one part of every image give the same band and the same whitening
    weights to float32 rounding (numpy's complex products of the phase shift are not bit for bit the same in arrays
    laid out differently) (with each particle's CTF, half maps that differ, particles of both halves in every part)."""
    from lorefine_mpi.config import load_config
    from lorefine_mpi.refine import engine as eng

    cfg = load_config(dataset / "lorefine.yaml")
    engine = eng.RefineEngine(cfg)
    assert engine.use_ctf
    stage = eng.Stage("iteration_01/module1", 1, 0, cfg.modules[0].name)
    state = engine.begin_stage(stage, engine.consensus, [engine.consensus] * len(cfg.modules), [engine.consensus_poses] * len(cfg.modules))
    noise = np.random.default_rng(0).normal(0.0, engine.consensus.std(), (2, *engine.consensus.shape)).astype(np.float32)
    halves = {h: engine.consensus + noise[h - 1] for h in (1, 2)}
    found = {}
    for part_bytes in (1, 1 << 40):
        monkeypatch.setattr(eng, "BAND_PART_BYTES", part_bytes)
        found[part_bytes] = engine.search_band(state, lambda half: halves[half])
    (band_one, weights_one, _), (band_all, weights_all, _) = found.values()
    assert band_one == band_all
    np.testing.assert_allclose(weights_one, weights_all, rtol=1e-6, atol=0)
    assert 0 < band_all <= engine.box // 2
