"""Motion analysis against oracles: the motion put into poses by the simulator's composition comes back out;
the relative motion is the composition of the two rigid motions applied to points; the PCA is the
eigen-decomposition of the covariance; a motion about one axis is found by the first component; moving a
map puts its density where the motion sends it."""

import numpy as np
import pytest

from lorefine_mpi.geometry import rotations
from lorefine_mpi.simulate.dataset import uniform_rotations
from lorefine_mpi.validation import motion


def moved_poses(rng, n, q, centre, shift):
    a0 = uniform_rotations(rng, n)
    o0 = rng.normal(0, 2, (n, 2))
    a, o = rotations.compose_module_pose(a0, o0, q, centre, shift)
    return a0, o0, a, o


def test_module_motion_recovers_the_rotation_and_the_shift_across_the_beam():
    rng = np.random.default_rng(0)
    n = 50
    q = rotations.from_rotation_vector(rng.normal(0, 0.05, (n, 3)))
    shift = rng.normal(0, 1.5, (n, 3))
    centre = np.array([5.0, -3.0, 2.0])
    a0, o0, a, o = moved_poses(rng, n, q, centre, shift)
    q_found, t_found = motion.module_motion(a0, o0, a, o, centre)
    np.testing.assert_allclose(q_found, q, atol=1e-12)
    beam = a0[:, 2, :]  # the viewing direction in the complex's frame
    across = shift - (shift * beam).sum(1, keepdims=True) * beam
    np.testing.assert_allclose(t_found, across, atol=1e-9)


def test_relative_motion_is_the_composition_of_the_rigid_motions():
    """Module k's motion seen from module j: M_j⁻¹(M_k(p)) for points p, against (R, s) about c_k."""
    rng = np.random.default_rng(1)
    n = 20
    q_j, q_k = (rotations.from_rotation_vector(rng.normal(0, 0.1, (n, 3))) for _ in range(2))
    t_j, t_k = rng.normal(0, 2, (n, 3)), rng.normal(0, 2, (n, 3))
    c_j, c_k = np.array([-8.0, 1.0, 0.5]), np.array([7.0, -2.0, 3.0])
    r, s = motion.relative_motion(q_j, t_j, c_j, q_k, t_k, c_k)
    p = rng.normal(0, 10, (n, 3))
    moved_k = np.einsum("nij,nj->ni", q_k, p - c_k) + c_k + t_k  # M_k(p)
    back = np.einsum("nji,nj->ni", q_j, moved_k - c_j - t_j) + c_j  # M_j⁻¹
    np.testing.assert_allclose(np.einsum("nij,nj->ni", r, p - c_k) + c_k + s, back, atol=1e-9)


def test_pca_is_the_eigendecomposition_of_the_covariance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mean, eigenvalues, explained, components, scores = motion.pca(x)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    np.testing.assert_allclose(eigenvalues, values[::-1], rtol=1e-9)
    np.testing.assert_allclose(np.abs(components.T @ vectors[:, ::-1]), np.eye(6), atol=1e-6)
    np.testing.assert_allclose(explained.sum(), 1.0)
    np.testing.assert_allclose(scores, (x - mean) @ components, atol=1e-9)


@pytest.mark.parametrize("axis", [[1.0, 0.0, 0.0], [0.3, -0.5, 0.8]])
def test_motion_about_one_axis_is_the_first_component(axis):
    """Both modules turn about one axis (through their own centres) by independent N(0, 3°) angles: the
    rotation part of the first component is that axis, and it explains most of the variance."""
    rng = np.random.default_rng(3)
    n, voxel = 2000, 4.0
    unit = np.asarray(axis) / np.linalg.norm(axis)
    centres = np.array([[-6.0, 2.0, 1.0], [9.0, -3.0, -1.5]])
    a0 = uniform_rotations(rng, n)
    o0 = rng.normal(0, 2, (n, 2))
    poses = []
    for c in centres:
        q = rotations.rotation_about_axis(unit, np.deg2rad(rng.normal(0, 3.0, n)))
        poses.append(rotations.compose_module_pose(a0, o0, q, c, np.zeros((n, 3))))
    result = motion.analyse(["large", "small"], centres, a0, o0, poses, voxel)
    first = result.components[:3, 0] / np.linalg.norm(result.components[:3, 0])
    angle = np.rad2deg(np.arccos(min(1.0, abs(first @ unit))))
    assert angle < 1.0, angle
    assert result.variance_explained[0] > 0.5
    relative = result.relative_rotation_deg[0]
    assert np.std(relative @ unit) == pytest.approx(3.0 * np.sqrt(2), rel=0.1)  # the difference of two N(0, 3°) angles


def test_move_volume_sends_a_blob_where_the_motion_says():
    n, voxel = 32, 2.0
    axis = np.arange(n) - n // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    point = np.array([5.0, -2.0, 3.0])  # xyz px
    blob = np.exp(-((x - point[0]) ** 2 + (y - point[1]) ** 2 + (z - point[2]) ** 2) / (2 * 1.5**2))
    rotation_deg, shift_angstrom, centre = np.array([0.0, 0.0, 30.0]), np.array([2.0, 4.0, -2.0]), np.array([1.0, 1.0, 0.0])
    moved = motion.move_volume(blob, rotation_deg, shift_angstrom, centre, voxel)
    q = rotations.from_rotation_vector(np.deg2rad(rotation_deg))
    expected = q @ (point - centre) + centre + shift_angstrom / voxel
    weights = np.clip(moved, 0, None)
    found = np.array([(weights * x).sum(), (weights * y).sum(), (weights * z).sum()]) / weights.sum()
    np.testing.assert_allclose(found, expected, atol=0.05)
