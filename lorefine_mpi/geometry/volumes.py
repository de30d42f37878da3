"""Volume geometry of the modules: centres of mass, moving a volume (recentring a module on the box centre,
SPEC §3.2), the poses that go with a recentred module, a module's mean rigid motion, and the masks' extent.

All volumes are ``(N, N, N)`` float arrays indexed ``[z, y, x]``, centre at index N//2; positions are
``(x, y, z)`` px from the box centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.kernels import backend


def centre_of_mass_px(volume, weights=None) -> np.ndarray:
    """Centre of mass of ``max(volume · weights, 0)``, xyz px from the box centre: ``(3,)`` float64."""
    v = np.asarray(volume, dtype=np.float64)
    if weights is not None:
        v = v * np.asarray(weights, dtype=np.float64)
    v = np.clip(v, 0.0, None)
    total = v.sum()
    if total <= 0:
        return np.zeros(3)
    n = v.shape[0]
    axis = np.arange(n) - n // 2
    z = (v.sum(axis=(1, 2)) * axis).sum() / total
    y = (v.sum(axis=(0, 2)) * axis).sum() / total
    x = (v.sum(axis=(0, 1)) * axis).sum() / total
    return np.array([x, y, z])


def shift_volume(volume, shift_px) -> np.ndarray:
    """The volume with its content moved by ``shift_px`` (xyz px), sub-pixel, by a Fourier phase ramp.

    ``out(r) = V(r − shift)``; periodic, so the content must stay inside the box. Returns float32.
    """
    v = np.asarray(volume, dtype=np.float32)
    n = v.shape[0]
    k = np.fft.fftfreq(n)
    sx, sy, sz = np.asarray(shift_px, dtype=np.float64)
    ramp_z = np.exp(-2j * np.pi * k * sz).astype(np.complex64)[:, None, None]
    ramp_y = np.exp(-2j * np.pi * k * sy).astype(np.complex64)[None, :, None]
    ramp_x = np.exp(-2j * np.pi * np.fft.rfftfreq(n) * sx).astype(np.complex64)[None, None, :]
    spectrum = backend().rfftn(v)
    spectrum *= ramp_z
    spectrum *= ramp_y
    spectrum *= ramp_x
    return backend().irfftn(spectrum, v.shape).astype(np.float32, copy=False)


def recentre(volume, centre_px) -> np.ndarray:
    """The volume moved so that ``centre_px`` sits at the box centre: ``V'(r) = V(r + c)``."""
    return shift_volume(volume, -np.asarray(centre_px, dtype=np.float64))


def recentre_origins(matrices, origin_px, centre_px) -> np.ndarray:
    """Origins (n, 2) px that make the recentred model reproduce the same images (angles stay)."""
    return rotations.recentre_pose(matrices, origin_px, centre_px)


def consensus_origins(matrices, origin_px_centred, centre_px) -> np.ndarray:
    """Back from the recentred frame: origins (n, 2) px in the consensus frame, ``o = o' + (A c)_xy``."""
    c = np.asarray(centre_px, dtype=np.float64)
    return np.asarray(origin_px_centred) + np.einsum("nij,j->ni", np.asarray(matrices), c)[:, :2]


@dataclasses.dataclass(frozen=True)
class MeanMotion:
    """A rigid motion of a module about its centre: rotation (3, 3) and shift_px (3,) xyz px."""

    rotation: np.ndarray
    shift_px: np.ndarray

    @property
    def angle_rad(self) -> float:
        return float(rotations.geodesic_angle(self.rotation, np.eye(3)))


def remove_mean_motion(matrices, origin_px, reference_matrices, reference_origin_px, centre_px, max_iterations=50):
    """The module's poses with their mean rigid motion relative to reference poses taken out.

    A pose (A, o) of the module is its reference pose (A0, o0) with the module moved by a rotation Q about
    its centre c and a shift t (`rotations.compose_module_pose`); in the recentred frame (o' = o − (A c)_xy)
    that is ``A = A0 Q`` and ``o' = o0' − (A0 t)_xy``. The mean motion is the Karcher mean Q̄ of the
    ``Q_i = A0_iᵀ A_i`` (``mean_i log(Q_i Q̄ᵀ) = 0``) and the least-squares t̄ of the origin changes (3D:
    particles seen from different directions see different components of it; a component that no view
    sees is left at 0). Taking it out, ``A_i Q̄ᵀ`` and ``o'_i + (A0_i t̄)_xy``, leaves poses whose mean
    motion is zero, so a map reconstructed from them sits where the reference poses put the module.

    matrices, reference_matrices: (n, 3, 3); origin_px, reference_origin_px: (n, 2) px, consensus frame;
    centre_px: (3,) the module centre. Returns (matrices (n, 3, 3), origin_px (n, 2), `MeanMotion`).
    """
    a = np.asarray(matrices, dtype=np.float64)
    a0 = np.asarray(reference_matrices, dtype=np.float64)
    q = np.swapaxes(a0, -1, -2) @ a
    mean = np.eye(3)
    for _ in range(max_iterations):
        step = rotations.rotation_vector(q @ mean.T).mean(axis=0)
        mean = rotations.from_rotation_vector(step) @ mean
        if np.linalg.norm(step) < 1e-13:
            break
    change = recentre_origins(a, origin_px, centre_px) - recentre_origins(a0, reference_origin_px, centre_px)
    shift = np.linalg.lstsq(a0[:, :2, :].reshape(-1, 3), -change.reshape(-1), rcond=None)[0]
    motion = MeanMotion(mean, shift)
    return (*apply_mean_motion(a, origin_px, a0, motion, centre_px), motion)


def apply_mean_motion(matrices, origin_px, reference_matrices, motion: "MeanMotion", centre_px):
    """Poses (n, 3, 3), (n, 2) px with a module's mean motion (`remove_mean_motion`) taken out, each pose relative to its
    particle's reference pose (n, 3, 3): ``A Q̄ᵀ`` and, in the recentred frame, ``o' + (A0 t̄)_xy``."""
    a = np.asarray(matrices, dtype=np.float64)
    fixed = a @ motion.rotation.T
    centred = recentre_origins(a, origin_px, centre_px) + np.einsum("nij,j->ni", np.asarray(reference_matrices, dtype=np.float64),
                                                                    motion.shift_px)[:, :2]
    return fixed, consensus_origins(fixed, centred, centre_px)


def mask_radius_px(mask, centre_px, threshold=0.5) -> float:
    """Largest distance (px) from ``centre_px`` of a voxel with ``mask ≥ threshold``."""
    m = np.asarray(mask)
    n = m.shape[0]
    z, y, x = np.nonzero(m >= threshold)
    if len(x) == 0:
        return 0.0
    points = np.stack([x, y, z], -1) - n // 2 - np.asarray(centre_px)
    return float(np.sqrt((points**2).sum(-1)).max())


def auto_mask_diameter_px(mask, centre_px, box, max_shift_px) -> float:
    """The round 2D CCC mask that holds every projection of the module: ``2 · radius + 2`` px, at most
    the box less the shift range on both sides (the paper used 30 and 40 px for the two ribosomal subunits)."""
    diameter = 2.0 * mask_radius_px(mask, centre_px) + 2.0
    return float(min(diameter, box - 2.0 * max_shift_px - 2.0))


def circular_mask(box, diameter_px) -> np.ndarray:
    """(N, N) bool: pixels whose centre is within ``diameter_px / 2`` of the image centre N//2."""
    axis = np.arange(box) - box // 2
    r2 = axis[None, :] ** 2 + axis[:, None] ** 2
    return r2 <= (diameter_px / 2.0) ** 2
