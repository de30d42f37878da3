"""Weighted back-projection by direct Fourier inversion, as RELION's BackProjector does.

Each image's spectrum (lorefine's rfft2 layout), un-shifted to its origin, is inserted along its
central slice into a padded 3D half grid by trilinear scatter (the exact transpose of
`fourier.project`'s gather): ``data += CTF · F`` and ``weight += CTF²``. `reconstruct` enforces
Hermitian symmetry on the kx = 0 plane, weights the data, inverts the FFT, divides out the trilinear
gridding kernel (sinc²) and crops.

Weighting, as RELION's BackProjector::reconstruct: the iterative gridding of Pipe & Menon (1999). Start
from ``w = 1``; repeat ``w ← w / max(|(weight · w) ⊛ b|, floor)`` where b is RELION's Kaiser–Bessel blob
(radius 1.9 voxels, α = 15, normalised to sum 1; the convolution is a product in real space), then use
``data · w``. Where the slices sample densely this is ``data / weight``; where they sample sparsely (high
frequency) it accounts for each sample's spread into its neighbours, which plain division does not.
With 0 iterations the weighting is the plain ``data / max(weight, floor)``. The accumulators are plain arrays, so
ranks can sum them (`add`, or an MPI reduction on ``data`` and ``weight``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import i0

from lorefine_mpi.projection import fourier

BLOB_RADIUS_VOXELS = 1.9
BLOB_ALPHA = 15.0


def blob_multiplier(p: int) -> np.ndarray:
    """Real-space (p, p, p) factor whose product with a volume convolves its spectrum with the blob.

    For a spectrum F (numpy layout) and the blob stencil S (sum 1): ``F ⊛ S = p³ · fftn(ifftn(F) · ifftn(S))``.
    """
    reach = int(np.floor(BLOB_RADIUS_VOXELS))
    o = np.arange(-reach, reach + 1)
    dz, dy, dx = np.meshgrid(o, o, o, indexing="ij")
    r = np.sqrt(dz**2 + dy**2 + dx**2)
    inside = r <= BLOB_RADIUS_VOXELS
    blob = np.where(inside, i0(BLOB_ALPHA * np.sqrt(np.clip(1.0 - (r / BLOB_RADIUS_VOXELS) ** 2, 0.0, None))) / i0(BLOB_ALPHA), 0.0)
    stencil = np.zeros((p, p, p))
    stencil[dz % p, dy % p, dx % p] = blob / blob.sum()
    # S is real and even, so ifftn(S) is real and the half spectrum suffices.
    return np.fft.irfftn(stencil[:, :, : p // 2 + 1], s=(p, p, p), axes=(0, 1, 2)) * p**3


class BackProjector:
    """Accumulators for one map. box: N (even); padding: P / N.

    data: (P, P, P//2+1) complex128, weight: (P, P, P//2+1) float64, layout of `fourier.FourierVolume`.
    """

    def __init__(self, box: int, padding: int = 2):
        fourier.require_even_box(box)
        self.box, self.padding = int(box), int(padding)
        shape = fourier.spectrum_shape(self.box, self.padding)
        self.data = np.zeros(shape, dtype=np.complex128)
        self.weight = np.zeros(shape, dtype=np.float64)
        self._geometry = fourier.FourierVolume(self.data, self.box, self.padding)

    def insert(self, images_ft, matrices, ctf=None, shifts_px=None) -> None:
        """Add n images. images_ft: (n, N, N//2+1) complex, lorefine's rfft2 layout of the particle images;
        matrices: (n, 3, 3); ctf: (n, N, N//2+1) or None; shifts_px: (n, 2) RELION origins or None."""
        matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        images_ft = np.asarray(images_ft, dtype=np.complex128)
        if shifts_px is not None:
            # The image is P(x + o); the slice holds P, so move the content back by +o.
            images_ft = fourier.shift_images_ft(images_ft, -np.asarray(shifts_px, dtype=np.float64)).astype(np.complex128)
        ctf = np.ones(images_ft.shape) if ctf is None else np.asarray(ctf, dtype=np.float64)
        coords, keep = fourier._slice_coordinates(self._geometry, matrices, None)
        index, weight, conj = fourier._trilinear(self._geometry, coords)
        values = (images_ft * ctf).reshape(len(matrices), -1)[:, keep]
        values = np.where(conj, np.conj(values), values)
        ctf2 = (ctf**2).reshape(len(matrices), -1)[:, keep]
        flat_index = index.reshape(-1)
        size = self.data.size
        contrib = (values[..., None] * weight).reshape(-1)
        self.data.reshape(-1)[:] += np.bincount(flat_index, contrib.real, size) + 1j * np.bincount(flat_index, contrib.imag, size)
        self.weight.reshape(-1)[:] += np.bincount(flat_index, (ctf2[..., None] * weight).reshape(-1), size)

    def add(self, other: "BackProjector") -> None:
        self.data += other.data
        self.weight += other.weight

    def reconstruct(self, weight_floor: float = 1e-3, gridding_iterations: int = 10) -> np.ndarray:
        """The map (N, N, N) float32: weight the data (module docstring), invert, correct, crop.

        weight_floor: fraction of the largest weight (plain division) or of the largest convolved weight
        (iterative gridding) below which it is not trusted. Voxels beyond radius N/2 of the centre are set
        to 0, as in RELION.
        """
        p, n = self.box * self.padding, self.box
        data, weight = self.data.copy(), self.weight.copy()
        # kx = 0 plane: a sample inserted at (0, ky, kz) stands for its conjugate at (0, −ky, −kz) too.
        mirror = (p - np.arange(p)) % p  # centred index of −k
        plane_d, plane_w = data[:, :, 0], weight[:, :, 0]
        sym_d = plane_d + np.conj(plane_d[mirror][:, mirror])
        sym_w = plane_w + plane_w[mirror][:, mirror]
        data[:, :, 0], weight[:, :, 0] = sym_d, sym_w
        spectrum = np.fft.ifftshift(data * self._weighting(weight, weight_floor, gridding_iterations), axes=(0, 1))
        padded = np.fft.fftshift(np.fft.irfftn(spectrum, s=(p, p, p), axes=(0, 1, 2)))
        start = p // 2 - n // 2
        volume = padded[start : start + n, start : start + n, start : start + n]
        axis = (np.arange(n) - n // 2) / p
        correction = np.sinc(axis) ** 2
        volume = volume / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
        # Scale so that a map rebuilt from its own projections comes back at the original scale.
        volume = volume * (p**3) / (n**2) / n / self.padding**3
        r = np.arange(n) - n // 2
        outside = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) > (n // 2) ** 2
        volume[outside] = 0.0
        return volume.astype(np.float32)

    def _weighting(self, weight, weight_floor, iterations) -> np.ndarray:
        """Factors for the data (same layout), see the module docstring."""
        if iterations == 0:
            floor = weight_floor * weight.max() if weight.max() > 0 else 1.0
            return 1.0 / np.maximum(weight, floor)
        p = self.box * self.padding
        shape, axes = (p, p, p), (0, 1, 2)
        sampled = np.fft.ifftshift(weight, axes=(0, 1))
        multiplier = blob_multiplier(p)
        factors = np.ones_like(sampled)
        for _ in range(iterations):
            spread = np.abs(np.fft.rfftn(np.fft.irfftn(sampled * factors, s=shape, axes=axes) * multiplier, axes=axes))
            factors /= np.maximum(spread, weight_floor * spread.max() if spread.max() > 0 else 1.0)
        return np.fft.fftshift(factors, axes=(0, 1))
