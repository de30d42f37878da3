"""Taking a module's mean rigid motion out of its poses (`modules.remove_mean_motion`)."""

import numpy as np
import pytest

from lorefine_mpi.geometry import rotations, volumes


@pytest.fixture
def consensus():
    rng = np.random.default_rng(4)
    n = 400
    a0 = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    return a0, rng.normal(0, 2, (n, 2)), np.array([4.0, -3.0, 6.0])


def test_one_motion_of_every_particle_is_found_and_undone(consensus):
    a0, o0, centre = consensus
    q = rotations.rotation_about_axis(np.array([1.0, 2.0, -0.5]), np.deg2rad(3.0))
    t = np.array([1.0, -2.0, 0.5])
    n = len(a0)
    moved = rotations.compose_module_pose(a0, o0, np.broadcast_to(q, (n, 3, 3)), centre, np.broadcast_to(t, (n, 3)))
    a, o, motion = volumes.remove_mean_motion(*moved, a0, o0, centre)
    np.testing.assert_allclose(motion.rotation, q, atol=1e-12)
    np.testing.assert_allclose(motion.shift_px, t, atol=1e-9)
    np.testing.assert_allclose(a, a0, atol=1e-12)
    np.testing.assert_allclose(o, o0, atol=1e-9)


def test_a_spread_about_the_mean_is_kept_and_its_mean_is_zero_afterwards(consensus):
    a0, o0, centre = consensus
    rng = np.random.default_rng(5)
    n = len(a0)
    spread = rotations.from_rotation_vector(rng.normal(0, np.deg2rad(1.5), (n, 3)))
    bias = rotations.rotation_about_axis(np.array([0.0, 0.0, 1.0]), np.deg2rad(0.6))
    shifts = rng.normal(0, 1, (n, 3)) + np.array([0.3, 0.0, -0.2])
    a, o = rotations.compose_module_pose(a0, o0, bias @ spread, centre, shifts)
    fixed, fixed_o, motion = volumes.remove_mean_motion(a, o, a0, o0, centre)
    # the removed motion is the mean one (within the spread's standard error), the residual mean is zero
    assert np.rad2deg(rotations.geodesic_angle(motion.rotation, bias)) < 3 * 1.5 * np.sqrt(3 / n) + 0.05
    residual = rotations.rotation_vector(np.swapaxes(a0, -1, -2) @ fixed)
    np.testing.assert_allclose(residual.mean(axis=0), 0.0, atol=1e-12)
    change = volumes.recentre_origins(fixed, fixed_o, centre) - volumes.recentre_origins(a0, o0, centre)
    design = a0[:, :2, :].reshape(-1, 3)
    np.testing.assert_allclose(design.T @ change.reshape(-1), 0.0, atol=1e-8)  # no least-squares shift left
    # the particles' poses relative to each other are unchanged
    np.testing.assert_allclose(rotations.geodesic_angle(fixed, fixed[0]), rotations.geodesic_angle(a, a[0]), atol=1e-6)


def test_a_shift_no_view_sees_is_left_at_zero():
    n = 50
    a0 = np.broadcast_to(np.eye(3), (n, 3, 3))  # every particle seen down z: z shifts are invisible
    o0 = np.zeros((n, 2))
    centre = np.zeros(3)
    moved = rotations.compose_module_pose(a0, o0, a0, centre, np.broadcast_to([0.5, -1.0, 3.0], (n, 3)))
    _, o, motion = volumes.remove_mean_motion(*moved, a0, o0, centre)
    np.testing.assert_allclose(motion.shift_px, [0.5, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(o, 0.0, atol=1e-12)
