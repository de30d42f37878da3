"""The masked CCC kernel against a direct loop implementation of the paper's Eq. 1."""

import numpy as np
import pytest

from lorefine_mpi.geometry import rotations
from lorefine_mpi.search import modules, score


def ccc_oracle(f, g, mask, shift):
    """Eq. 1 by hand: pixels of the mask, reference moved by the shift (g_s(y) = g(y + s))."""
    n = f.shape[0]
    a, b = [], []
    for y in range(n):
        for x in range(n):
            if not mask[y, x]:
                continue
            yy, xx = y + int(shift[1]), x + int(shift[0])
            a.append(f[y, x])
            b.append(g[yy, xx] if 0 <= yy < n and 0 <= xx < n else 0.0)
    a, b = np.array(a), np.array(b)
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())


@pytest.mark.parametrize("box,max_shift,step", [(24, 4, 1), (32, 4, 2), (20, 3, 1)])
def test_masked_ccc_matches_eq1_for_every_shift(box, max_shift, step):
    rng = np.random.default_rng(box)
    f = rng.normal(size=(2, box, box))
    g = rng.normal(size=(3, box, box))
    masks = [modules.circular_mask(box, box * 0.5), rng.random((box, box)) < 0.3]
    shifts = score.shift_grid(max_shift, step)
    for mask in masks:
        got = score.masked_ccc(score.prepare_references(g, mask, shifts), f)
        assert got.shape == (2, 3, len(shifts))
        for p in range(2):
            for r in range(3):
                expected = [ccc_oracle(f[p], g[r], mask, s) for s in shifts]
                np.testing.assert_allclose(got[p, r], expected, atol=1e-5)


def test_composite_ccc_matches_eq1_with_the_rest_added():
    box = 24
    rng = np.random.default_rng(3)
    f, g, rest = rng.normal(size=(1, box, box)), rng.normal(size=(2, box, box)), rng.normal(size=(1, box, box))
    mask = modules.circular_mask(box, 14)
    shifts = score.shift_grid(3, 1)
    got = score.composite_ccc(score.prepare_references(g, mask, shifts), f, rest)
    for r in range(2):
        for j, s in enumerate(shifts):
            moved = np.roll(g[r], (-int(s[1]), -int(s[0])), axis=(0, 1))  # g(y + s), no wrap inside the mask
            assert got[0, r, j] == pytest.approx(ccc_oracle(f[0], moved + rest[0], mask, (0, 0)), abs=1e-5)


def test_known_shift_is_recovered_with_its_sign():
    box = 32
    rng = np.random.default_rng(5)
    g = rng.normal(size=(1, box, box))
    true = np.array([3, -2])
    f = np.roll(g[0], (-true[1], -true[0]), axis=(0, 1))[None]  # f(y) = g(y + s)
    shifts = score.shift_grid(4, 1)
    rho = score.masked_ccc(score.prepare_references(g, modules.circular_mask(box, 16), shifts), f)
    np.testing.assert_array_equal(shifts[np.argmax(rho[0, 0])], true)
    assert rho.max() == pytest.approx(1.0, abs=1e-5)


def test_take_selects_references_and_subpixel_peak_refines():
    box = 24
    rng = np.random.default_rng(7)
    g = rng.normal(size=(4, box, box))
    tables = score.prepare_references(g, modules.circular_mask(box, 12), score.shift_grid(2, 1))
    f = rng.normal(size=(1, box, box))
    np.testing.assert_allclose(score.masked_ccc(score.take(tables, [2, 0]), f)[0], score.masked_ccc(tables, f)[0][[2, 0]], atol=1e-6)
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
