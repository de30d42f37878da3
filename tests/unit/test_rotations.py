"""Euler angles and pose algebra against hand-written formulas (no RELION needed here)."""

import numpy as np
import pytest

from lorefine_mpi.geometry import rotations as R


def rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])


def ry(b):
    c, s = np.cos(b), np.sin(b)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


@pytest.fixture
def rng():
    return np.random.default_rng(1)


def test_euler_matches_product_of_elementary_rotations(rng):
    angles = rng.uniform(-np.pi, np.pi, size=(50, 3))
    got = R.euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    for (a, b, g), m in zip(angles, got):
        np.testing.assert_allclose(m, rz(g) @ ry(b) @ rz(a), atol=1e-12)


def test_projection_direction_is_paper_eq9(rng):
    rot, tilt = rng.uniform(-np.pi, np.pi, 20), rng.uniform(0, np.pi, 20)
    direction = R.projection_direction(R.euler_to_matrix(rot, tilt, rng.uniform(-np.pi, np.pi, 20)))
    expected = np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], -1)
    np.testing.assert_allclose(direction, expected, atol=1e-12)


def test_matrix_to_euler_round_trip(rng):
    rot, tilt, psi = rng.uniform(-np.pi, np.pi, 200), rng.uniform(0.01, np.pi - 0.01, 200), rng.uniform(-np.pi, np.pi, 200)
    m = R.euler_to_matrix(rot, tilt, psi)
    back = R.euler_to_matrix(*R.matrix_to_euler(m))
    np.testing.assert_allclose(back, m, atol=1e-10)
    np.testing.assert_allclose(R.matrix_to_euler(m)[1], tilt, atol=1e-10)


@pytest.mark.parametrize("tilt", [0.0, np.pi])
def test_matrix_to_euler_gimbal_lock(tilt):
    m = R.euler_to_matrix(0.3, tilt, 0.5)
    rot, tilt_back, psi = R.matrix_to_euler(m)
    assert rot == 0.0 and np.isclose(tilt_back, tilt)
    np.testing.assert_allclose(R.euler_to_matrix(rot, tilt_back, psi), m, atol=1e-12)


def test_geodesic_angle(rng):
    a = R.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 10)))
    axis = rng.normal(size=(10, 3))
    angle = rng.uniform(0, np.pi, 10)
    b = a @ R.rotation_about_axis(axis, angle)
    np.testing.assert_allclose(R.geodesic_angle(a, b), angle, atol=1e-7)


def test_rotation_about_axis_is_right_handed():
    q = R.rotation_about_axis([0, 0, 1.0], np.pi / 2)
    np.testing.assert_allclose(q @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)


def test_inplane_rotation_adds_to_psi(rng):
    rot, tilt, psi = 0.4, 1.1, -0.2
    m = R.inplane_rotation(0.3) @ R.euler_to_matrix(rot, tilt, psi)
    np.testing.assert_allclose(R.matrix_to_euler(m), (rot, tilt, psi + 0.3), atol=1e-12)


def test_compose_module_pose_moves_points_like_the_moved_module(rng):
    """A point p of the unmoved module, moved to q = Q(p − c) + c + t, is where the composed pose puts p."""
    n = 20
    a = R.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, n)))
    o = rng.normal(size=(n, 2))
    q = R.rotation_about_axis(rng.normal(size=(n, 3)), rng.normal(0, 0.1, n))
    c, t = rng.normal(size=3) * 5, rng.normal(size=(n, 3))
    p = rng.normal(size=(7, 3)) * 10
    a2, o2 = R.compose_module_pose(a, o, q, c, t)
    moved = np.einsum("nij,mj->nmi", q, p - c) + c + t[:, None, :]
    expected = np.einsum("nij,nmj->nmi", a, moved)[..., :2] - o[:, None, :]
    np.testing.assert_allclose(R.image_position_px(a2, p, o2), expected, atol=1e-10)


def test_recentre_pose_keeps_every_image_point(rng):
    n = 10
    a = R.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, n)))
    o = rng.normal(size=(n, 2))
    c = np.array([3.0, -2.0, 5.5])
    p = rng.normal(size=(6, 3)) * 10
    o2 = R.recentre_pose(a, o, c)
    np.testing.assert_allclose(R.image_position_px(a, p - c, o2), R.image_position_px(a, p, o), atol=1e-12)


def test_rotation_vector_round_trip_and_axis_angle_by_hand(rng):
    axis = rng.normal(size=(50, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.concatenate([rng.uniform(0, 3.0, 45), [0.0, 1e-10, 1e-6, 1e-3, 3.1]])
    omega = R.rotation_vector(R.rotation_about_axis(axis, angle))
    np.testing.assert_allclose(omega, axis * angle[:, None], atol=1e-7)
    np.testing.assert_allclose(R.from_rotation_vector(axis * angle[:, None]), R.rotation_about_axis(axis, angle), atol=1e-12)
    np.testing.assert_allclose(R.from_rotation_vector(np.zeros(3)), np.eye(3))
