"""`UnitSearch` with the rest of the complex in the images: the subtract mode's per-particle scale k and the
composite mode, with an astigmatic CTF, against known poses and a known k (noise-free images of the two
phantom modules; the small module is the target, so the larger rest overlaps it in most projections).

Each test also runs the same search with the rest left out (``rest_ft=None``, what a subtraction with k = 0
or a composite without its rest would do) and checks that it misses the same thresholds: the thresholds
catch a wrong subtraction. Thresholds are what the code achieved when this was written, with a margin."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from lorefine_mpi.geometry import candidates, rotations, volumes
from lorefine_mpi.projection import ctf as ctf_model
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import local

DATA = Path(__file__).resolve().parents[1] / "data"
BOX = 48


def read(name):
    with mrcfile.open(DATA / name) as m:
        return np.array(m.data, dtype=np.float32)


@pytest.fixture(scope="module")
def complex_particles():
    """16 particles: the target (small module) moved by 1–3° and ±1.5 px from the consensus pose, the rest
    (large module) at the consensus pose; an astigmatic CTF per particle (ΔV = 0.8–0.95 ΔU, any angle)."""
    target, rest = read("phantom_module_2.mrc"), read("phantom_module_1.mrc")
    centre = volumes.centre_of_mass_px(target)
    target_fvol = fourier.prepare_volume(volumes.recentre(target, centre), 2)
    rest_fvol = fourier.prepare_volume(rest, 2)
    rng = np.random.default_rng(11)
    n = 16
    a0 = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    truth = a0 @ rotations.rotation_about_axis(rng.normal(size=(n, 3)), np.deg2rad(rng.uniform(1, 3, n)))
    o0 = rng.normal(0, 1.5, (n, 2))
    o_true = o0 + rng.uniform(-1.5, 1.5, (n, 2))
    du = rng.uniform(10000, 20000, n)
    dv, angle = du * rng.uniform(0.8, 0.95, n), rng.uniform(0, np.pi, n)

    def ctf(rows, extra, pixels=None):
        return ctf_model.ctf_2d(BOX, 4.0, du[rows], dv[rows], angle[rows] + extra, 300, 2.7, 0.1, pixels=pixels)

    every = ctf(np.arange(n), 0.0)
    target_ft = fourier.project(target_fvol, truth, volumes.recentre_origins(truth, o_true, centre), ctf=every)
    rest_ft = fourier.project(rest_fvol, a0, o0, ctf=every)
    diameter = volumes.auto_mask_diameter_px((target > 0.05).astype(np.float32), centre, BOX, 3)
    return {"fvol": target_fvol, "centre": centre, "a0": a0, "o0": o0, "truth": truth, "o_true": o_true, "ctf": ctf,
            "target_ft": target_ft, "rest_ft": rest_ft, "mask": volumes.circular_mask(BOX, diameter), "rng": rng, "n": n}


def search(p, mode, images_ft, rest_ft):
    settings = local.SearchSettings("separate", mode, np.deg2rad(6), np.deg2rad(2), np.deg2rad(2), 2, 3, 1, 10, p["mask"])
    unit = local.UnitInput(images_ft, p["a0"], volumes.recentre_origins(p["a0"], p["o0"], p["centre"]), p["ctf"], rest_ft, np.arange(p["n"]))
    found = local.UnitSearch(p["fvol"], candidates.direction_grid(np.deg2rad(2)), settings, BOX).run(unit)
    angle = np.rad2deg(rotations.geodesic_angle(found.matrix, p["truth"]))
    shift = np.linalg.norm(found.origin_px - volumes.recentre_origins(p["truth"], p["o_true"], p["centre"]), axis=1)
    return found, angle, shift


def accurate(angle, shift):
    """Median ≤ 0.7°, every particle ≤ 1.5° and ≤ 0.25 px (the search of 3c91c59 achieved median 0.46° / 0.57°,
    at most 1.17° / 0.99° and 0.19 / 0.14 px for subtract / composite; with the rest left out: median 2.4° / 2.9°,
    up to 7.9°)."""
    return np.median(angle) <= 0.7 and angle.max() <= 1.5 and shift.max() <= 0.25


def test_subtract_fits_the_rests_scale_k_of_each_particle_and_finds_the_module(complex_particles):
    p = complex_particles
    rng = np.random.default_rng(3)
    k_true = rng.uniform(0.6, 1.4, p["n"])
    a_true = rng.uniform(0.8, 1.2, p["n"])
    images = a_true[:, None, None] * p["target_ft"] + k_true[:, None, None] * p["rest_ft"]
    images[:, 0, 0] += rng.normal(0, 50, p["n"])  # a constant background: the fit's constant absorbs it
    found, angle, shift = search(p, "subtract", images, p["rest_ft"])
    k_error = np.abs(found.rest_scale - k_true)
    print(f"subtract: angle median {np.median(angle):.3f} max {angle.max():.3f} deg, shift max {shift.max():.3f} px; "
          f"k error median {np.median(k_error):.4f} max {k_error.max():.4f}")
    assert accurate(angle, shift), (angle, shift)
    assert np.median(k_error) <= 0.02 and k_error.max() <= 0.06, (found.rest_scale, k_true)  # achieved 0.0091 and 0.040
    _, angle, shift = search(p, "subtract", images, None)
    assert not accurate(angle, shift)


def test_composite_compares_with_the_module_plus_the_rest(complex_particles):
    p = complex_particles
    images = p["target_ft"] + p["rest_ft"]
    found, angle, shift = search(p, "composite", images, p["rest_ft"])
    print(f"composite: angle median {np.median(angle):.3f} max {angle.max():.3f} deg, shift max {shift.max():.3f} px")
    assert accurate(angle, shift), (angle, shift)
    assert np.all(found.rest_scale == 0)
    _, angle, shift = search(p, "composite", images, None)
    assert not accurate(angle, shift)


def test_an_ill_conditioned_fit_of_k_is_flagged_not_silent():
    """A rest that is (nearly) the target's own projection cannot be told apart from it: k is not determined."""
    rng = np.random.default_rng(0)
    target = fourier.to_fourier(rng.normal(size=(BOX, BOX)))
    image = 2.0 * target
    a, k = local.fit_rest_scale(image, target, target * (1 + 1e-12))
    assert np.isnan(k) and a == 1.0
