"""Candidate orientations of the local search: directions in a cone, ψ by parallel transport, shifts.

Direction set D (paper: SPIDER ``VO EA``): a golden-spiral (Fibonacci) lattice of
``round(4π / d²)`` points for an angular step d. It is deterministic, covers the sphere evenly with no
pole clustering (unlike a (θ, φ) grid), every point owns an equal area (≈ d²), and its nearest-neighbour
spacing is ≈ d; a 10° cone at d = 2° holds ≈ 78 directions, as in the paper. The same function at a
coarse step gives the projection classes of the parallel layer.

Parallel transport (paper Eqs. 12–14): moving the camera from e_r0 to e_ri along the great arc without
in-plane turning is the minimal rotation G (axis e_r0 × e_ri, angle α) applied to the volume-frame
camera axes: ``A_i = A0 · Gᵀ``, whose third row is e_ri. tests/unit/test_candidates.py checks its ψ
against the spherical-triangle formulas, re-derived.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.geometry import rotations


def direction_grid(step_rad: float) -> np.ndarray:
    """The evenly distributed direction set D at angular step ``step_rad``: (m, 3) float64 unit vectors."""
    m = max(int(round(4 * np.pi / step_rad**2)), 2)
    i = np.arange(m) + 0.5
    z = 1.0 - 2.0 * i / m
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


WORK_BYTES = 64 * 2**20  # the largest (rows × grid) float64 product made at once


def rows_at_once(m: int) -> int:
    """How many rows of a (rows, m) float64 product fit in `WORK_BYTES` (at least 1, at most 4096)."""
    return int(max(1, min(4096, WORK_BYTES // (8 * max(int(m), 1)))))


def nearest_direction(grid, directions) -> np.ndarray:
    """Index (n,) of the grid direction (m, 3) nearest to each direction (n, 3)."""
    directions = np.atleast_2d(directions)
    grid_t = np.asarray(grid).T
    step = rows_at_once(grid_t.shape[1])  # bounded memory for large particle sets and fine grids
    out = np.empty(len(directions), dtype=np.int64)
    for start in range(0, len(directions), step):
        out[start : start + step] = np.argmax(directions[start : start + step] @ grid_t, axis=1)
    return out


def cone_directions(grid, e_r0, cone_half_angle_rad) -> np.ndarray:
    """Indices of the directions of D with ``arccos(e_r0 · e_ri) ≤ α0`` (paper Eq. 11)."""
    return np.nonzero(np.asarray(grid) @ np.asarray(e_r0) >= np.cos(cone_half_angle_rad) - 1e-12)[0]


def minimal_rotation(u, v) -> np.ndarray:
    """The rotation G of least angle with ``G u = v``: u (3,), v (k, 3) unit vectors → (k, 3, 3)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    axis = np.cross(np.broadcast_to(u, v.shape), v)
    sin = np.linalg.norm(axis, axis=1)
    cos = np.clip(v @ u, -1.0, 1.0)
    safe = np.where(sin[:, None] > 1e-12, axis, np.array([1.0, 0.0, 0.0]))
    return rotations.rotation_about_axis(safe, np.arctan2(sin, cos))


def transported_poses(a0, directions) -> np.ndarray:
    """``A_i = A0 · Gᵀ`` (k, 3, 3): the pose a0 (3, 3) carried to each direction (k, 3) without in-plane turning."""
    g = minimal_rotation(np.asarray(a0)[2], directions)
    return np.asarray(a0)[None] @ np.swapaxes(g, -1, -2)


def psi_offsets_rad(psi_half_range_rad: float, psi_step_rad: float) -> np.ndarray:
    """ψ offsets ``n · d1`` with ``|n| ≤ t1 = floor(range / d1)`` (paper Eq. 15)."""
    t1 = int(np.floor(psi_half_range_rad / psi_step_rad + 1e-9))
    return np.arange(-t1, t1 + 1) * psi_step_rad
