"""Split the consensus map into modules, and recentre a module on the box centre (SPEC §3.1–3.2).

All volumes are ``(N, N, N)`` float arrays indexed ``[z, y, x]``, centre at index N//2; positions are
``(x, y, z)`` px from the box centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lorefine_mpi.geometry import rotations


@dataclasses.dataclass(frozen=True)
class Module:
    """One rigid module of the complex, in the consensus frame.

    name: the config's name. mask: (N, N, N) float32 soft mask in [0, 1] (all ones for `whole`).
    centre_px: (3,) centre of mass of ``map · mask`` (positive part), xyz px from the box centre.
    """

    name: str
    mask: np.ndarray
    centre_px: np.ndarray


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


def split(volume, mask):
    """``(V · M, V · (1 − M))``: the module and the rest of the complex, float32."""
    v = np.asarray(volume, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)
    return v * m, v * (1.0 - m)


def shift_volume(volume, shift_px) -> np.ndarray:
    """The volume with its content moved by ``shift_px`` (xyz px), sub-pixel, by a Fourier phase ramp.

    ``out(r) = V(r − shift)``; periodic, so the content must stay inside the box. Returns float32.
    """
    v = np.asarray(volume, dtype=np.float64)
    n = v.shape[0]
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(n), indexing="ij")
    sx, sy, sz = np.asarray(shift_px, dtype=np.float64)
    ramp = np.exp(-2j * np.pi * (kx * sx + ky * sy + kz * sz))
    return np.fft.irfftn(np.fft.rfftn(v) * ramp, s=v.shape, axes=(0, 1, 2)).astype(np.float32)


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
