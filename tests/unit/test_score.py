"""The masked CCC against a direct implementation of the paper's Eq. 1, and the sub-grid peak fits."""

import numpy as np
import pytest

from lorefine_mpi.geometry import rotations
from lorefine_mpi.search import score


def ccc_oracle(a, b):
    """Eq. 1 by hand over the pixels given (the mask's): means and norms over them."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())


@pytest.mark.parametrize("n_pixels", [50, 311])
def test_masked_ccc_matches_eq1_for_every_pair(n_pixels):
    rng = np.random.default_rng(n_pixels)
    patches = rng.normal(size=(7, n_pixels)) * rng.uniform(0.1, 10, (7, 1)) + rng.normal(size=(7, 1))
    templates = rng.normal(size=(4, n_pixels)) + 3.0
    got = score.masked_ccc(score.normalise_rows(patches), score.normalise_rows(templates))
    assert got.shape == (7, 4)
    for q in range(7):
        for k in range(4):
            assert got[q, k] == pytest.approx(ccc_oracle(patches[q], templates[k]), abs=1e-5)
    # a constant patch correlates with nothing (0, not NaN)
    assert np.all(score.masked_ccc(score.normalise_rows(np.ones((1, n_pixels))), score.normalise_rows(templates)) == 0)


@pytest.mark.parametrize("n_pixels", [50, 311])
def test_patch_ccc_of_raw_patches_matches_eq1_for_every_pair(n_pixels):
    """The search's form: raw float32 patches (any mean and scale), normalised templates."""
    rng = np.random.default_rng(n_pixels + 1)
    patches = (rng.normal(size=(7, n_pixels)) * rng.uniform(0.1, 10, (7, 1)) + rng.normal(size=(7, 1))).astype(np.float32)
    templates = rng.normal(size=(4, n_pixels)) + 3.0
    got = score.patch_ccc(patches, score.normalise_rows(templates))
    assert got.shape == (7, 4) and got.dtype == np.float32
    for q in range(7):
        for k in range(4):
            assert got[q, k] == pytest.approx(ccc_oracle(patches[q], templates[k]), abs=1e-5)
    assert np.all(score.patch_ccc(np.ones((1, n_pixels), np.float32), score.normalise_rows(templates)) == 0)


def test_composite_ccc_matches_eq1_with_the_rest_added():
    rng = np.random.default_rng(3)
    patches, rest, templates = rng.normal(size=(5, 80)), rng.normal(size=(5, 80)) * 0.5, rng.normal(size=(3, 80)) * 2
    got = score.composite_ccc(patches, rest, templates)
    for q in range(5):
        for k in range(3):
            assert got[q, k] == pytest.approx(ccc_oracle(patches[q], templates[k] + rest[q]), abs=1e-5)


def test_subpixel_peak_refines_a_paraboloid():
    shifts = score.shift_grid(2, 1)
    peak = np.array([0.4, -0.3])
    values = -((shifts - peak) ** 2).sum(1)  # a paraboloid with its top at (0.4, -0.3)
    np.testing.assert_allclose(score.subpixel_peak(values[None], shifts)[0], peak, atol=1e-9)


def lattice_around(best, step_rad):
    """Candidates at the 27 offsets {-1, 0, 1}³ · step around ``best`` (rotation vectors, left-multiplied)."""
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    return offsets, rotations.from_rotation_vector(offsets * step_rad) @ best


@pytest.mark.parametrize("peak", [[0.2, -0.3, 0.1], [0.0, 0.0, 0.0], [-0.4, 0.1, 0.25]])
def test_quadratic_peak_rotation_finds_the_peak_of_a_quadratic_score(peak):
    rng = np.random.default_rng(3)
    best = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, 3))
    step = np.deg2rad(2.0)
    _, poses = lattice_around(best, step)
    # A concave quadratic in the rotation vector (in steps) of each pose relative to the true pose.
    truth = rotations.from_rotation_vector(np.array(peak) * step) @ best
    hessian = -np.array([[3.0, 0.5, 0.2], [0.5, 2.0, -0.3], [0.2, -0.3, 1.5]])
    u = rotations.rotation_vector(poses @ truth.T) / step
    scores = 0.9 + 0.5 * np.einsum("ki,ij,kj->k", u, hessian, u)
    found = score.quadratic_peak_rotation(best, poses, scores, step)
    # The fit is in coordinates about `best`, the score about the truth: equal to second order in the step.
    assert np.rad2deg(rotations.geodesic_angle(found, truth)) < 0.01
    assert np.rad2deg(rotations.geodesic_angle(found, best)) <= 0.5 * 2.0 + 1e-9


def test_quadratic_peak_rotation_stays_within_half_a_step_and_keeps_the_grid_pose_without_a_maximum():
    best, step = np.eye(3), np.deg2rad(2.0)
    offsets, poses = lattice_around(best, step)
    far = score.quadratic_peak_rotation(best, poses, -((offsets - [3.0, 0.0, 0.0]) ** 2).sum(1), step)
    np.testing.assert_allclose(rotations.rotation_vector(far) / step, [0.5, 0.0, 0.0], atol=1e-9)
    saddle = offsets[:, 0] ** 2 - offsets[:, 1] ** 2 - offsets[:, 2] ** 2
    assert score.quadratic_peak_rotation(best, poses, saddle, step) is best
    few = np.full(len(poses), -np.inf)
    few[:5] = 1.0
    assert score.quadratic_peak_rotation(best, poses, few, step) is best
