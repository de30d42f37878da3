"""Candidate directions and the ψ centre by parallel transport, against the paper's spherical-triangle formulas."""

import numpy as np
import pytest

from lorefine_mpi.geometry import candidates, rotations


def psi_oracle(phi0, theta0, psi0, phi_i, theta_i):
    """The paper's Eqs. 12–14 re-derived: A = north pole, B = (φ0, θ0), C = (φi, θi).

    ∠B, ∠C are the internal angles of the spherical triangle ABC (law of cosines for sides
    a = BC, b = AC = θi, c = AB = θ0). Eq. 13 when |φi − φ0| ≤ π, Eq. 14 otherwise, and
    ψi = φ0 + ψ0 − φi when A, B, C lie on one great circle.
    """
    d = phi_i - phi0
    b_dir = np.array([np.sin(theta0) * np.cos(phi0), np.sin(theta0) * np.sin(phi0), np.cos(theta0)])
    c_dir = np.array([np.sin(theta_i) * np.cos(phi_i), np.sin(theta_i) * np.sin(phi_i), np.cos(theta_i)])
    a = np.arccos(np.clip(b_dir @ c_dir, -1, 1))
    if abs(np.sin(d)) < 1e-12:  # one great circle through the pole
        return phi0 + psi0 - phi_i
    cos_b = (np.cos(theta_i) - np.cos(a) * np.cos(theta0)) / (np.sin(a) * np.sin(theta0))
    cos_c = (np.cos(theta0) - np.cos(a) * np.cos(theta_i)) / (np.sin(a) * np.sin(theta_i))
    angle_b, angle_c = np.arccos(np.clip(cos_b, -1, 1)), np.arccos(np.clip(cos_c, -1, 1))
    if abs(d) <= np.pi:
        return psi0 - (np.pi - angle_b - angle_c) * d / abs(d)
    return psi0 + (np.pi - angle_b - angle_c) * d / abs(d)


def wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def transported_psi(phi0, theta0, psi0, phi_i, theta_i):
    a0 = rotations.euler_to_matrix(phi0, theta0, psi0)
    e_i = np.array([[np.sin(theta_i) * np.cos(phi_i), np.sin(theta_i) * np.sin(phi_i), np.cos(theta_i)]])
    a_i = candidates.transported_poses(a0, e_i)[0]
    np.testing.assert_allclose(a_i[2], e_i[0], atol=1e-12)  # the new pose looks along e_ri
    rot, tilt, psi = rotations.matrix_to_euler(a_i)
    assert wrap(rot - phi_i) == pytest.approx(0, abs=1e-9) and tilt == pytest.approx(theta_i, abs=1e-9)
    return psi


def test_parallel_transport_matches_the_spherical_triangle_formulas():
    rng = np.random.default_rng(0)
    checked = {"near": 0, "wrapped": 0}
    for _ in range(300):
        # angles in RELION's range (−π, π]; with φ0 near ±π the short arc crosses the cut and |φi − φ0| > π (Eq. 14)
        phi0 = rng.uniform(-np.pi, np.pi) if rng.random() < 0.5 else wrap(np.pi + rng.normal(0, 0.1))
        theta0, psi0 = rng.uniform(0.2, np.pi - 0.2), rng.uniform(-np.pi, np.pi)
        theta_i = np.clip(theta0 + rng.normal(0, 0.12), 0.05, np.pi - 0.05)
        phi_i = wrap(phi0 + rng.normal(0, 0.2))
        checked["wrapped" if abs(phi_i - phi0) > np.pi else "near"] += 1
        got = transported_psi(phi0, theta0, psi0, phi_i, theta_i)
        assert wrap(got - psi_oracle(phi0, theta0, psi0, phi_i, theta_i)) == pytest.approx(0, abs=1e-6)
    assert checked["near"] > 100 and checked["wrapped"] > 30


@pytest.mark.parametrize("dphi", [0.0, np.pi])
def test_same_great_circle_case(dphi):
    phi0, theta0, psi0 = 0.7, 1.0, -0.4
    theta_i = 1.1 if dphi == 0 else 0.1  # across the pole when φi = φ0 + π
    got = transported_psi(phi0, theta0, psi0, phi0 + dphi, theta_i)
    assert wrap(got - psi_oracle(phi0, theta0, psi0, phi0 + dphi, theta_i)) == pytest.approx(0, abs=1e-6)


def test_zero_move_keeps_the_pose_and_cone_holds_about_78_directions():
    a0 = rotations.euler_to_matrix(0.3, 1.2, -2.0)
    np.testing.assert_allclose(candidates.transported_poses(a0, a0[2][None])[0], a0, atol=1e-12)
    grid = candidates.direction_grid(np.deg2rad(2.0))
    counts = [len(candidates.cone_directions(grid, d, np.deg2rad(10.0))) for d in candidates.direction_grid(np.deg2rad(20.0))]
    assert 74 <= np.mean(counts) <= 82
    # even: nearest-neighbour spacing close to the step everywhere
    sample = grid[:: len(grid) // 200]
    nearest = np.sort(np.arccos(np.clip(sample @ grid.T, -1, 1)), axis=1)[:, 1]
    assert np.rad2deg(nearest).min() > 1.5 and np.rad2deg(nearest).max() < 2.6


def test_projection_classes_assign_nearest_grid_direction():
    grid = candidates.direction_grid(np.deg2rad(15))
    dirs = candidates.direction_grid(np.deg2rad(3))
    idx = candidates.nearest_direction(grid, dirs)
    brute = np.array([np.argmin(np.arccos(np.clip(grid @ d, -1, 1))) for d in dirs])
    np.testing.assert_array_equal(idx, brute)
