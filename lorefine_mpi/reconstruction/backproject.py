"""Weighted back-projection by direct Fourier inversion, as RELION's BackProjector does.

Each image's spectrum (lorefine's rfft2 layout), un-shifted to its origin, is inserted along its
central slice into a padded 3D half grid by trilinear scatter (`kernels.backend().scatter_slices`, the
exact adjoint of the projector's gather; both use the band layout of `lorefine_mpi.kernels.cpu`):
``data += CTF · F`` and ``weight += CTF²``. `reconstruct` enforces Hermitian symmetry on the kx = 0
plane, keeps only the sphere of the original box's Nyquist frequency, weights the data, inverts the FFT,
divides out the trilinear gridding kernel (sinc²), crops, and low-passes the result at Nyquist (cropping
in real space spreads a little power into the corners of the small box's Fourier cube; none is left there).

Weighting, as RELION's BackProjector::reconstruct: the iterative gridding of Pipe & Menon (1999). Start
from ``w = 1``; repeat ``w ← w / max(|(weight · w) ⊛ b|, floor)`` where b is RELION's Kaiser–Bessel blob
(radius 3.8 voxels of the padded grid, α = 15; the convolution is a product with its Fourier transform in
real space, tabulated as RELION does: `blob_multiplier`), then use
``data · w``. Where the slices sample densely this is ``data / weight``; where they sample sparsely (high
frequency) it accounts for each sample's spread into its neighbours, which plain division does not.
With 0 iterations the weighting is the plain ``data / max(weight, floor)``. The accumulators are float64
plain arrays, so ranks can sum them (`add`, or an MPI reduction on ``data`` and ``weight``); the
weighting and the inversion run in single precision (the back-end's FFTs), which changes the maps by ~1e-6.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import iv, jv

from lorefine_mpi.kernels import backend
from lorefine_mpi.projection import fourier

BLOB_RADIUS_VOXELS = 3.8  # RELION's 1.9 × 2, whatever the padding (BackProjector: tab_ftblob of radius 2 × blob_radius)
BLOB_ALPHA = 15.0
BLOB_TABLE_SIZE = 10000  # RELION's TabFtBlob: this many values over the frequencies [0, 0.5), read by truncation


def blob_fourier_transform(frequency) -> np.ndarray:
    """The 3D Fourier transform of the Kaiser–Bessel blob of order 0 (radius ``BLOB_RADIUS_VOXELS`` a, α),
    at frequencies w (cycles per voxel), up to a constant factor (Lewitt 1990): ``I_{3/2}(σ) / σ^{3/2}`` with
    ``σ = sqrt(α² − (2π a w)²)``, and ``J_{3/2}(σ) / σ^{3/2}`` with ``σ = sqrt((2π a w)² − α²)`` beyond."""
    x = 2.0 * np.pi * BLOB_RADIUS_VOXELS * np.asarray(frequency, dtype=np.float64)
    sigma = np.sqrt(np.abs(BLOB_ALPHA**2 - x * x))
    sigma = np.where(sigma > 0, sigma, 1e-12)  # the limit at σ → 0 is finite
    return np.where(x > BLOB_ALPHA, jv(1.5, sigma), iv(1.5, sigma)) / sigma**1.5


@functools.lru_cache(maxsize=1)
def blob_multiplier(p: int) -> np.ndarray:
    """Real-space (p, p, p) float32 factor whose product with a volume (its centre at index 0) convolves
    its spectrum with the blob, as RELION's convoluteBlobRealSpace: the blob's Fourier transform at
    ``|r| / p`` (r the voxel's wrapped coordinate), normalised to 1 at 0, read from a table of
    `BLOB_TABLE_SIZE` values over [0, 0.5) by truncating the index, and 0 from 0.5 on (the corners of the
    cube). Computed once per size (per distinct |r|², then gathered) and kept, read-only."""
    step = 0.5 / BLOB_TABLE_SIZE
    table = blob_fourier_transform(np.arange(BLOB_TABLE_SIZE) * step)
    table /= table[0]
    r2_max = 3 * (p // 2) ** 2
    index = np.floor(np.sqrt(np.arange(r2_max + 1, dtype=np.float64)) / p / step).astype(np.int64)
    by_r2 = np.where(index < BLOB_TABLE_SIZE, table[np.minimum(index, BLOB_TABLE_SIZE - 1)], 0.0).astype(np.float32)
    k = np.arange(p)
    k2 = (np.where(k < p // 2, k, k - p) ** 2).astype(np.intp)
    plane = k2[:, None] + k2[None, :]
    factor = np.empty((p, p, p), dtype=np.float32)
    for z in range(p):  # a plane at a time: no p³ index array (15× faster at p = 256)
        np.take(by_r2, plane + k2[z], out=factor[z])
    factor.flags.writeable = False
    return factor


SOFT_EDGE_PX = 3.0  # the width of the raised-cosine edge beyond radius N/2 (RELION's, for its reconstructions)


def soft_mask_outside(volume, width_px: float = SOFT_EDGE_PX) -> np.ndarray:
    """The cube (N, N, N) kept inside radius N/2 of its centre and faded over ``width_px`` by a raised cosine
    into the background, the mean of the map weighted by the fade (constant beyond N/2 + width): the
    corners of a reconstruction hold only noise amplified by the gridding correction. float32."""
    v = np.asarray(volume, dtype=np.float32)
    n = v.shape[0]
    r1 = (np.arange(n) - n // 2).astype(np.float32) ** 2
    r = np.sqrt(r1[:, None, None] + r1[None, :, None] + r1[None, None, :])
    fade = 0.5 - 0.5 * np.cos(np.pi * np.clip((r - n / 2) / width_px, 0.0, 1.0, dtype=np.float32))
    background = float((fade * v).sum(dtype=np.float64) / fade.sum(dtype=np.float64)) if fade.any() else 0.0
    return ((1.0 - fade) * v + fade * np.float32(background)).astype(np.float32, copy=False)


def lowpass_at_nyquist(volume) -> np.ndarray:
    """A cube (N, N, N) with every Fourier coefficient beyond |k| = N/2 removed: float32."""
    v = np.asarray(volume, dtype=np.float32)
    n = v.shape[0]
    k = np.fft.fftfreq(n) * n
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2
    spectrum = backend().rfftn(v)
    spectrum[k2 > (n // 2) ** 2] = 0
    return backend().irfftn(spectrum, v.shape).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=1)
def _outside_nyquist(p: int) -> np.ndarray:
    """(P, P, P//2+1) bool: the coefficients of the padded FFT layout beyond radius P/2 (kept, read-only)."""
    k2 = (np.fft.fftfreq(p, 1.0 / p) ** 2).astype(np.float32)
    h = p // 2
    outside = (k2[:, None, None] + k2[None, :, None] + np.arange(h + 1, dtype=np.float32)[None, None, :] ** 2) > h**2
    outside.flags.writeable = False
    return outside


class BackProjector:
    """Accumulators for one map. box: N (even); padding: P / N.

    data: band layout (2R+1, 2R+1, R+1) complex128 with R = padding · N/2 + 1 (`fourier.band_half_width`),
    weight: the same shape, float64. steps: (data, weight) grid every inserted term is rounded to, so that
    sums are exact in any order (`refine.engine.ExactSum`); (0, 0): not rounded.
    """

    def __init__(self, box: int, padding: int = 2, steps=(0.0, 0.0)):
        fourier.require_even_box(box)
        self.box, self.padding, self.steps = int(box), int(padding), tuple(steps)
        shape = fourier.band_shape(self.box, self.padding)
        self.data = np.zeros(shape, dtype=np.complex128)
        self.weight = np.zeros(shape, dtype=np.float64)
        self._grid = fourier.band_grid(self.box)

    def insert(self, images_ft, matrices, ctf=None, shifts_px=None, weights=None) -> None:
        """Add n images. images_ft: (n, N, N//2+1) complex, lorefine's rfft2 layout of the particle images;
        matrices: (n, 3, 3); ctf: (n, N, N//2+1) or None; shifts_px: (n, 2) RELION origins or None;
        weights: (n,) a factor per image on both its data and its weight (posterior weights) or None."""
        matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        n = len(matrices)
        images_ft = np.asarray(images_ft).reshape(n, -1)[:, self._grid.index]
        if shifts_px is not None:
            # The image is P(x + o); the slice holds P, so move the content back by +o.
            images_ft = images_ft * fourier.phase_ramp(self.box, -np.asarray(shifts_px, dtype=np.float64)).reshape(n, -1)[:, self._grid.index]
        if ctf is None:
            values, ctf2 = images_ft.astype(np.complex128), np.ones(images_ft.shape)
        else:
            c = np.asarray(ctf, dtype=np.float64).reshape(n, -1)[:, self._grid.index]
            values, ctf2 = images_ft * c, c * c
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)[:, None]
            values, ctf2 = values * w, ctf2 * w
        backend().scatter_slices(self.data, self.weight, self._grid.kx, self._grid.ky, matrices, self.padding, values, ctf2, self.steps)

    def _fft_layout(self, accumulator, dtype) -> np.ndarray:
        """An accumulator (``data`` or ``weight``) in the padded FFT layout (P, P, P//2+1) as ``dtype``, Hermitian
        symmetry enforced on kx = 0, everything beyond the Nyquist sphere (|k| > P/2) set to 0."""
        p, r = self.box * self.padding, (accumulator.shape[0] - 1) // 2
        h = p // 2
        k = np.fft.fftfreq(p, 1.0 / p).astype(np.int64)  # FFT order: 0 … P/2 − 1, −P/2 … −1
        rows = r + k
        out = np.empty((p, p, h + 1), dtype=dtype)
        for lo, hi in ((0, h), (h, p)):  # two blocks of kz, each two blocks of ky: plain slices of the band layout
            for lo2, hi2 in ((0, h), (h, p)):
                z0, y0 = rows[lo], rows[lo2]
                out[lo:hi, lo2:hi2] = accumulator[z0 : z0 + (hi - lo), y0 : y0 + (hi2 - lo2), : h + 1]
        # kx = 0 plane: a sample inserted at (0, ky, kz) stands for its conjugate at (0, −ky, −kz) too.
        mirror = (-k) % p
        plane = out[:, :, 0].copy()
        out[:, :, 0] += np.conj(plane[np.ix_(mirror, mirror)]) if np.iscomplexobj(out) else plane[np.ix_(mirror, mirror)]
        out[_outside_nyquist(p)] = 0
        return out

    def reconstruct(self, weight_floor: float = 1e-3, gridding_iterations: int = 10) -> np.ndarray:
        """The map (N, N, N) float32: weight the data (module docstring), invert, correct, crop, low-pass.

        weight_floor: fraction of the largest weight (plain division) or of the largest convolved weight
        (iterative gridding) below which it is not trusted. Beyond radius N/2 of the centre the map fades to
        its mean value there (`soft_mask_outside`, as RELION's reconstruction ends), before the low-pass at Nyquist.
        """
        p, n = self.box * self.padding, self.box
        factors = self._weighting(self._fft_layout(self.weight, np.float32), weight_floor, gridding_iterations)
        data = self._fft_layout(self.data, np.complex64)  # laid out after the weighting: one grid less at its peak
        data *= factors
        del factors
        padded = backend().irfftn(data, (p, p, p))  # FFT order: the centre at index 0
        volume = np.empty((n, n, n), dtype=padded.dtype)
        for fft_order, centred in fourier.centred_blocks(n, p):
            volume[centred] = padded[fft_order]
        correction = (np.sinc((np.arange(n) - n // 2) / p) ** 2).astype(np.float32)
        # Scale so that a map rebuilt from its own projections comes back at the original scale.
        scale = np.float32((p**3) / (n**2) / n / self.padding**3)
        volume = volume * scale / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
        return lowpass_at_nyquist(soft_mask_outside(volume))  # last: the mask's edge would put power back into the corners

    def _weighting(self, weight, weight_floor, iterations) -> np.ndarray:
        """Factors (float32) for the data in the FFT layout of `_fft_layout`, see the module docstring."""
        top = float(weight.max())
        if iterations == 0:
            return 1.0 / np.maximum(weight, np.float32(weight_floor * top if top > 0 else 1.0))
        p = self.box * self.padding
        shape, axes = (p, p, p), (0, 1, 2)
        multiplier = blob_multiplier(p)
        sampled = weight > 0
        factors = sampled.astype(np.float32)  # 0 where nothing was inserted: never divided, so never overflows
        product = np.zeros(weight.shape, dtype=np.complex64)  # a complex input spares scipy a conversion
        spread = np.empty_like(weight)
        for _ in range(iterations):
            np.multiply(weight, factors, out=product.real)
            real = backend().irfftn(product, shape, axes)
            real *= multiplier
            np.abs(backend().rfftn(real, axes, overwrite=True), out=spread)
            largest = float(spread.max())
            np.maximum(spread, np.float32(weight_floor * largest if largest > 0 else 1.0), out=spread)
            np.divide(factors, spread, out=factors, where=sampled)
        return factors
