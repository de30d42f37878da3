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
plain arrays, so ranks can sum them (an MPI reduction on ``data`` and ``weight``); the weighting and the
inversion run in single precision (the back-end's FFTs), which changes the maps by ~1e-6.

Memory: the accumulators and the padded grids of the weighting (P³/2 voxels each, 0.54 GB for a complex one
at box 256) are the largest arrays of a run. The accumulators hold the half ball that insertion reaches
(`projection.fourier.sphere_rows`: 0.80 GiB at box 256, half the band layout's box); the weighting's FFTs go
a plane at a time (`_blob_convolution`: the same 1D transforms in the same order as a 3D FFT, so the same
bits, without a real volume or a second spectrum); the data is laid out in the weighting's work grid once
that is done, and with ``consume`` the data accumulator goes to single precision first and the factors sit
in the weights' memory.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import iv, jv

from lorefine_mpi.kernels import backend
from lorefine_mpi.process_memory import release_freed_memory
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


@functools.lru_cache(maxsize=2)
def _blob_by_radius(p: int) -> tuple[np.ndarray, np.ndarray]:
    """(by_r2, k2) for a padded size P: the blob multiplier (`blob_multiplier`) as a function of the voxel's wrapped
    squared radius r² = 0 … 3(P/2)² (float32), and each index's wrapped squared coordinate along an axis (intp), so that
    the multiplier at (z, y, x) is ``by_r2[k2[z] + k2[y] + k2[x]]``. Small (kept, read-only)."""
    step = 0.5 / BLOB_TABLE_SIZE
    table = blob_fourier_transform(np.arange(BLOB_TABLE_SIZE) * step)
    table /= table[0]
    r2_max = 3 * (p // 2) ** 2
    index = np.floor(np.sqrt(np.arange(r2_max + 1, dtype=np.float64)) / p / step).astype(np.int64)
    by_r2 = np.where(index < BLOB_TABLE_SIZE, table[np.minimum(index, BLOB_TABLE_SIZE - 1)], 0.0).astype(np.float32)
    k = np.arange(p)
    k2 = (np.where(k < p // 2, k, k - p) ** 2).astype(np.intp)
    for array in (by_r2, k2):
        array.flags.writeable = False
    return by_r2, k2


def blob_multiplier_plane(p: int, z: int) -> np.ndarray:
    """Plane z (P, P) float32 of `blob_multiplier` (P): what the gridding multiplies a real-space plane by."""
    by_r2, k2 = _blob_by_radius(p)
    return np.take(by_r2, k2[:, None] + k2[None, :] + k2[z])


def blob_multiplier(p: int) -> np.ndarray:
    """Real-space (p, p, p) float32 factor whose product with a volume (its centre at index 0) convolves
    its spectrum with the blob, as RELION's convoluteBlobRealSpace: the blob's Fourier transform at
    ``|r| / p`` (r the voxel's wrapped coordinate), normalised to 1 at 0, read from a table of
    `BLOB_TABLE_SIZE` values over [0, 0.5) by truncating the index, and 0 from 0.5 on (the corners of the
    cube). The weighting applies it a plane at a time (`blob_multiplier_plane`); the whole cube is for studies."""
    return np.stack([blob_multiplier_plane(p, z) for z in range(p)])


def _blob_convolution(work) -> None:
    """In place: ``work`` (P, P, P//2+1) complex64, the half spectrum (FFT order) of a real volume, becomes the half
    spectrum of that volume times the blob multiplier (RELION's convoluteBlobRealSpace, the spectrum convolved with the
    blob). The same 1D transforms in the same order and the same scaling as ``rfftn(irfftn(work) · multiplier)`` with
    pocketfft (inverse: along z, y, then x, scaled by 1/P³ in the last pass; forward: x, z, y), so the same numbers,
    one plane at a time instead of a real volume and a second spectrum."""
    b, p = backend(), work.shape[0]
    fourier.fft_axis0_in_place(work, inverse=True)
    for z in range(p):
        real = _real_plane(work, z)
        real *= blob_multiplier_plane(p, z)
        work[z] = b.rfftn(real, axes=(1,))
    fourier.fft_axis0_in_place(work)
    for z in range(p):
        work[z] = b.fft(work[z], 0)


def _centred_inverse(spectrum, n: int) -> np.ndarray:
    """The centred cube (n, n, n) float32 of ``irfftn(spectrum)`` (P, P, P//2+1 → P³, its centre at index 0): the same
    transforms as irfftn (`_blob_convolution`), ``spectrum`` overwritten, and only the n planes that are kept inverted."""
    fourier.fft_axis0_in_place(spectrum, inverse=True)
    keep = fourier.fft_order_index(n, spectrum.shape[0])
    volume = np.empty((n, n, n), dtype=np.float32)
    for c, z in enumerate(keep):
        volume[c] = _real_plane(spectrum, z)[np.ix_(keep, keep)]
    return volume


def _real_plane(spectrum, z: int) -> np.ndarray:
    """Plane z (P, P) float32 of ``irfftn(spectrum)`` once the inverse FFT along axis 0 is done in place: the rest of
    pocketfft's irfftn (along y, then x) and its 1/P³, which it applies in its last pass."""
    p = spectrum.shape[0]
    plane = backend().irfftn(spectrum[z], (p, p), axes=(0, 1), scaled=False)
    plane *= np.float32(1.0 / float(p) ** 3)
    return plane


def _inside(array, dtype, shape) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` in the memory of ``array`` (C-contiguous, at least as many bytes), from its start."""
    return array.reshape(-1).view(np.uint8)[: int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


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


BATCH_BYTES = 16 << 20  # a batch of the back-projection: about this many bytes of its images' spectra
MAX_BATCH_IMAGES = 256


def image_batch(box: int) -> int:
    """Images a batch of the back-projection reads, transforms and inserts (`refine.engine`): at most
    `MAX_BATCH_IMAGES`, about `BATCH_BYTES` of their spectra (256 images up to box 128, 63 at box 256), so that the
    batch's arrays stay about 0.1 GB at any box."""
    return min(MAX_BATCH_IMAGES, fourier.spectra_in(BATCH_BYTES, box))


INSERT_SAMPLES = 1 << 20  # samples per call of the scatter: 161 images at box 128, 40 at box 256 (~95 MB of work arrays)


class BackProjector:
    """Accumulators for one map. box: N (even); padding: P / N.

    data: (S,) complex128 and weight: (S,) float64, the padded half spectrum in the ball layout
    `projection.fourier.sphere_rows` (the band layout's rows cut to the half ball that insertion reaches: half its
    memory); `band` gives either in the band layout. steps: (data, weight) grid every inserted term is rounded to, so
    that sums are exact in any order (`refine.engine.ExactSum`); (0, 0): not rounded.
    """

    def __init__(self, box: int, padding: int = 2, steps=(0.0, 0.0)):
        fourier.require_even_box(box)
        self.box, self.padding, self.steps = int(box), int(padding), tuple(steps)
        self.rows = fourier.sphere_rows(self.box, self.padding)
        self.data = np.zeros(self.rows.size, dtype=np.complex128)
        self.weight = np.zeros(self.rows.size, dtype=np.float64)
        self._grid = fourier.band_grid(self.box)

    def insert(self, images_ft, matrices, ctf=None, shifts_px=None, weights=None) -> None:
        """Add n images. images_ft: (n, N, N//2+1) complex, lorefine's rfft2 layout of the particle images;
        matrices: (n, 3, 3); ctf: (n, N, N//2+1) or None; shifts_px: (n, 2) RELION origins or None;
        weights: (n,) a factor per image on both its data and its weight (posterior weights) or None.
        Inserted `INSERT_SAMPLES` samples at a time (this and the scatter's work arrays hold about 90 bytes a sample)."""
        matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        images_ft = np.asarray(images_ft)
        shifts_px = None if shifts_px is None else np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        step = max(1, INSERT_SAMPLES // len(self._grid.kx))
        for start in range(0, len(matrices), step):
            part = slice(start, start + step)
            self._insert(images_ft[part], matrices[part], None if ctf is None else ctf[part], None if shifts_px is None else shifts_px[part],
                         None if weights is None else weights[part])

    def _insert(self, images_ft, matrices, ctf, shifts_px, weights) -> None:
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
        backend().scatter_slices(self.data, self.weight, self._grid.kx, self._grid.ky, matrices, self.padding, values, ctf2, self.steps,
                                 rows=self.rows)

    def band(self, accumulator) -> np.ndarray:
        """``data`` or ``weight`` in the band layout (2R+1, 2R+1, R+1) of `projection.fourier.band_shape` (0 beyond its rows)."""
        offsets, lengths, r = self.rows.offsets, self.rows.lengths, self.rows.half_width
        x = np.arange(r + 1)
        out = np.zeros((2 * r + 1, 2 * r + 1, r + 1), dtype=accumulator.dtype)
        for z in range(2 * r + 1):
            inside = x[None, :] < lengths[z][:, None]
            out[z][inside] = accumulator[(offsets[z][:, None] + x[None, :])[inside]]
        return out

    def _fft_layout(self, accumulator, out) -> np.ndarray:
        """``out`` (P, P, P//2+1) filled with an accumulator (``data`` or ``weight``) in the padded FFT layout, in out's dtype:
        everything beyond the Nyquist sphere (|k| > P/2) set to 0, Hermitian symmetry enforced on kx = 0. A plane at a time."""
        p, r = self.box * self.padding, self.rows.half_width
        h = p // 2
        k = np.fft.fftfreq(p, 1.0 / p).astype(np.int64)  # FFT order: 0 … P/2 − 1, −P/2 … −1
        rows = r + k  # the band layout's row of each FFT-order index
        x = np.arange(h + 1)
        k2 = k * k
        in_plane = k2[:, None] + (x * x)[None, :]
        for z in range(p):
            offsets, lengths = self.rows.offsets[rows[z], rows], self.rows.lengths[rows[z], rows]
            inside = (x[None, :] < lengths[:, None]) & (in_plane + k2[z] <= h * h)
            plane = out[z]
            plane[...] = 0
            plane[inside] = accumulator[(offsets[:, None] + x[None, :])[inside]]
        # kx = 0 plane: a sample inserted at (0, ky, kz) stands for its conjugate at (0, −ky, −kz) too.
        mirror = (-k) % p
        plane = out[:, :, 0].copy()
        out[:, :, 0] += np.conj(plane[np.ix_(mirror, mirror)]) if np.iscomplexobj(out) else plane[np.ix_(mirror, mirror)]
        return out

    def reconstruct(self, weight_floor: float = 1e-3, gridding_iterations: int = 10, consume: bool = False) -> np.ndarray:
        """The map (N, N, N) float32: weight the data (module docstring), invert, correct, crop, low-pass.

        weight_floor: fraction of the largest weight (plain division) or of the largest convolved weight
        (iterative gridding) below which it is not trusted. Beyond radius N/2 of the centre the map fades to
        its mean value there (`soft_mask_outside`, as RELION's reconstruction ends), before the low-pass at Nyquist.
        consume: the accumulators are used up (`clear` before the next use): ``data`` goes to single precision (the
        precision the reconstruction reads it in), the weighting's factors are kept in the memory of ``weight``, and both
        are released once read, so that at its peak the reconstruction holds 1.3 GB at box 256 instead of 1.9, and 0.8 GB
        from the inverse FFT on.
        """
        p, n = self.box * self.padding, self.box
        shape = (p, p, p // 2 + 1)
        weight = self._fft_layout(self.weight, np.empty(shape, dtype=np.float32))
        if consume:  # the data in single precision (as `_fft_layout` reads it), its double-precision accumulator released
            self.data = self.data.astype(np.complex64)
        work = np.empty(shape, dtype=np.complex64)
        factors = _inside(self.weight, np.float32, shape) if consume else None
        factors = self._weighting(weight, weight_floor, gridding_iterations, work, factors)
        del weight
        data = self._fft_layout(self.data, work)  # the weighting's work grid, free again
        data *= factors
        del factors
        if consume:  # both accumulators read: their memory (0.5 GB at box 256) given back before the inverse FFT's
            self.data = self.weight = np.zeros(0)
            release_freed_memory()
        volume = _centred_inverse(data, n)
        del data, work
        correction = (np.sinc((np.arange(n) - n // 2) / p) ** 2).astype(np.float32)
        # Scale so that a map rebuilt from its own projections comes back at the original scale.
        scale = np.float32((p**3) / (n**2) / n / self.padding**3)
        volume = volume * scale / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
        return lowpass_at_nyquist(soft_mask_outside(volume))  # last: the mask's edge would put power back into the corners

    def clear(self) -> None:
        """Both accumulators back to 0 (for the next use, after `reconstruct` with ``consume``)."""
        if self.data.dtype != np.complex128 or self.data.size != self.rows.size:
            self.data = np.zeros(self.rows.size, dtype=np.complex128)
        if self.weight.size != self.rows.size:
            self.weight = np.zeros(self.rows.size, dtype=np.float64)
        self.data.fill(0)
        self.weight.fill(0)

    def _weighting(self, weight, weight_floor, iterations, work=None, factors=None) -> np.ndarray:
        """Factors (float32) for the data in the FFT layout of `_fft_layout`, see the module docstring. work: a complex64
        array of ``weight``'s shape for the iterations, factors: a float32 one for the result (or None: new ones)."""
        top = float(weight.max())
        if iterations == 0:
            floored = np.maximum(weight, np.float32(weight_floor * top if top > 0 else 1.0))
            return 1.0 / floored if factors is None else np.divide(1.0, floored, out=factors)
        work = np.empty(weight.shape, dtype=np.complex64) if work is None else work
        factors = np.empty(weight.shape, dtype=np.float32) if factors is None else factors
        np.greater(weight, 0, out=factors)  # 0 where nothing was inserted: never divided, so never overflows
        for _ in range(iterations):
            np.multiply(weight, factors, out=work.real)
            work.imag[...] = 0
            _blob_convolution(work)
            # |·| a plane at a time, twice (for the largest, then for the division): no padded grid of it; writing it into
            # the work grid's own real part instead was 10 % slower at box 256 (numpy buffers the overlapping planes)
            largest = max(float(np.abs(plane).max()) for plane in work)
            floor = np.float32(weight_floor * largest if largest > 0 else 1.0)
            for z, plane in enumerate(work):
                spread = np.abs(plane)
                np.maximum(spread, floor, out=spread)
                np.divide(factors[z], spread, out=factors[z], where=weight[z] > 0)
        return factors
