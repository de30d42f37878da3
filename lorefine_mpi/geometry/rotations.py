"""The one geometry convention of lorefine (RELION's), documented once, here.

Coordinates
    A box of N pixels (N even) has its centre at index ``N // 2`` on every axis. Arrays are indexed
    ``[z, y, x]`` (x fastest, as in MRC files); a point is written ``(x, y, z)`` in pixels from the
    centre.

Euler angles
    (rot φ, tilt θ, psi ψ), ZYZ, RELION/SPIDER: ``A = Rz(ψ) · Ry(θ) · Rz(φ)`` with
    ``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
    Degrees exist only at the file boundary (``io/star.py``); inside, poses are 3 × 3 matrices.

Projection
    ``A`` maps volume coordinates to the lab frame: ``P_A[V](x, y) = ∫ V(Aᵀ (x, y, z)) dz``, so a
    volume point ``p`` appears in the projection at ``(A p)_xy``. The projection direction in the
    volume frame is the third row of ``A``: ``(sinθ cosφ, sinθ sinφ, cosθ)`` (paper Eq. 9).

Origin
    ``o = (rlnOriginXAngst, rlnOriginYAngst) / pixel size`` (``rlnOriginX/Y`` in px in STAR 3.0)
    is the shift that, applied to the image, centres the particle. The particle image is the
    projection moved by ``-o``: ``image(x) = P(x + o)``, and a volume point ``p`` lands in the image
    at ``(A p)_xy − o``. Pinned against RELION's ``relion_project`` in ``tests/unit/test_conventions.py``.

Rigid motion of a module (the simulator's ground truth, as in the RELION-made fixtures)
    ``V'(r) = V(Qᵀ (r − c − t) + c)`` (rotation Q about the module centre c, then shift t, px from
    the box centre) is seen as the unmoved module with ``A' = A Q`` and ``o' = o + (A' d)_xy`` where
    ``d = c − Qᵀ (c + t)``.
"""

from __future__ import annotations

import numpy as np

_EPS = 16 * np.finfo(np.float32).eps


def euler_to_matrix(rot_rad, tilt_rad, psi_rad) -> np.ndarray:
    """RELION's Euler_angles2matrix, batched.

    rot_rad, tilt_rad, psi_rad: scalars or arrays of one shape ``S``, radians.
    Returns ``S + (3, 3)`` float64 rotation matrices ``A = Rz(psi) Ry(tilt) Rz(rot)``.
    """
    a, b, g = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (rot_rad, tilt_rad, psi_rad)))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    out = np.empty(a.shape + (3, 3))
    out[..., 0, 0] = cg * cc - sg * sa
    out[..., 0, 1] = cg * cs + sg * ca
    out[..., 0, 2] = -cg * sb
    out[..., 1, 0] = -sg * cc - cg * sa
    out[..., 1, 1] = -sg * cs + cg * ca
    out[..., 1, 2] = sg * sb
    out[..., 2, 0] = sc
    out[..., 2, 1] = ss
    out[..., 2, 2] = cb
    return out


def matrix_to_euler(matrices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION's Euler_matrix2angles, batched: ``(..., 3, 3)`` → (rot, tilt, psi) in radians.

    tilt is in [0, π]; rot and psi in (−π, π]. At tilt 0 or π (gimbal lock) rot is set to 0 and the
    whole in-plane angle goes to psi, as RELION does.
    """
    m = np.asarray(matrices, dtype=np.float64)
    abs_sb = np.hypot(m[..., 0, 2], m[..., 1, 2])
    regular = abs_sb > _EPS
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    tilt = np.where(regular, np.arctan2(abs_sb, m[..., 2, 2]), np.where(m[..., 2, 2] > 0, 0.0, np.pi))
    psi_regular = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    psi_up = np.arctan2(-m[..., 1, 0], m[..., 0, 0])
    psi_down = np.arctan2(m[..., 1, 0], -m[..., 0, 0])
    psi = np.where(regular, psi_regular, np.where(m[..., 2, 2] > 0, psi_up, psi_down))
    return rot, tilt, psi


def projection_direction(matrices) -> np.ndarray:
    """The projection direction in the volume frame, the third row of A: ``(..., 3)`` unit vectors."""
    return np.asarray(matrices)[..., 2, :]


def rotation_about_axis(axis, angle_rad) -> np.ndarray:
    """Rotation matrices (Rodrigues) that turn vectors by ``angle_rad`` about unit ``axis``.

    axis: ``(..., 3)``; angle_rad: broadcastable to ``(...)``. Acting on column vectors,
    right-handed: ``R @ v`` turns v counter-clockwise seen from the tip of the axis.
    """
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.asarray(angle_rad, dtype=np.float64)[..., None, None]
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def inplane_rotation(angle_rad) -> np.ndarray:
    """``Rz(angle)`` in RELION's sign convention, ``(..., 3, 3)``: left-multiplying A adds to psi."""
    a = np.asarray(angle_rad, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(a.shape + (3, 3))
    out[..., 0, 0] = c
    out[..., 0, 1] = s
    out[..., 1, 0] = -s
    out[..., 1, 1] = c
    out[..., 2, 2] = 1.0
    return out


def rotation_vector(matrices) -> np.ndarray:
    """The rotation vector ω (axis × angle, radians) of rotations ``(..., 3, 3)`` with angle < π: ``(..., 3)``.

    Inverse of `from_rotation_vector`; ``rotation_about_axis(ω/|ω|, |ω|)`` gives the matrix back.
    """
    q = np.asarray(matrices, dtype=np.float64)
    angle = np.arccos(np.clip((np.trace(q, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0))
    skew = np.stack([q[..., 2, 1] - q[..., 1, 2], q[..., 0, 2] - q[..., 2, 0], q[..., 1, 0] - q[..., 0, 1]], -1)
    small = angle < 1e-8
    factor = np.where(small, 0.5, angle / (2.0 * np.sin(np.where(small, 1.0, angle))))
    return skew * factor[..., None]


def from_rotation_vector(vectors) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of rotation vectors ``(..., 3)`` (axis × angle, radians)."""
    v = np.asarray(vectors, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1)
    axis = np.where(angle[..., None] > 0, v, np.array([0.0, 0.0, 1.0]))
    return rotation_about_axis(axis, angle)


def geodesic_angle(a, b) -> np.ndarray:
    """Angle in radians of the rotation taking pose ``a`` to pose ``b`` (both ``(..., 3, 3)``)."""
    trace = np.einsum("...ij,...ij->...", np.asarray(a), np.asarray(b))
    return np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))


def image_position_px(matrices, points_px, origin_px) -> np.ndarray:
    """Where volume points land in the particle image, px from the image centre.

    matrices: ``(n, 3, 3)`` poses; points_px: ``(m, 3)`` xyz px from the box centre;
    origin_px: ``(n, 2)`` RELION origins in px. Returns ``(n, m, 2)``: ``(A p)_xy − o``.
    """
    lab = np.einsum("nij,mj->nmi", np.asarray(matrices), np.asarray(points_px))
    return lab[..., :2] - np.asarray(origin_px)[:, None, :]


def compose_module_pose(matrices, origin_px, q, centre_px, shift_px):
    """Pose of a module moved rigidly inside the complex, seen as the unmoved module.

    The moved module is ``V'(r) = V(Qᵀ (r − c − t) + c)``. Given the complex's pose (A, o), the
    same image is made by the unmoved module with ``A' = A Q`` and ``o' = o + (A' d)_xy`` where
    ``d = c − Qᵀ (c + t)``.

    matrices ``(n, 3, 3)``, origin_px ``(n, 2)``, q ``(n, 3, 3)``, centre_px ``(3,)``,
    shift_px ``(n, 3)``. Returns (``(n, 3, 3)``, ``(n, 2)``).
    """
    a_new = np.asarray(matrices) @ np.asarray(q)
    c = np.asarray(centre_px, dtype=np.float64)
    d = c[None, :] - np.einsum("nji,nj->ni", np.asarray(q), c[None, :] + np.asarray(shift_px))
    o_new = np.asarray(origin_px) + np.einsum("nij,nj->ni", a_new, d)[:, :2]
    return a_new, o_new


def recentre_pose(matrices, origin_px, centre_px):
    """Particle origins for a model shifted so that ``centre_px`` sits at the box centre.

    The shifted model is ``V'(r) = V(r + c)``; a point p of V is at ``p − c`` in V'. To keep every
    image the same, ``(A (p − c))_xy − o' = (A p)_xy − o``, so ``o' = o − (A c)_xy``. Angles stay.
    Returns origin_px ``(n, 2)``.
    """
    c = np.asarray(centre_px, dtype=np.float64)
    return np.asarray(origin_px) - np.einsum("nij,j->ni", np.asarray(matrices), c)[:, :2]
