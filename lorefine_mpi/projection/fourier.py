"""Central-slice projection from a zero-padded 3D Fourier transform, and the 2D Fourier helpers.

Layouts
    Fourier images: ``rfft2(ifftshift(image))``, shape ``(..., N, N//2+1)``, phase origin at the box
    centre N//2, ky in FFT order. `to_fourier` / `to_real` convert.
    Padded volume spectrum (`FourierVolume.data`): the band layout of `lorefine_mpi.kernels.cpu`,
    ``(2R+1, 2R+1, R+1)`` complex64 indexed ``[kz, ky, kx]`` in units of the padded grid (P = padding · N),
    kz and ky centred at index R, kx = 0 … R, holding the spectrum up to the volume's band radius
    (``radius_px`` image px; R = ceil(padding · radius) + 1); the phase origin is the volume's centre N//2.
    Frequencies in the padded grid are ``padding ×`` those of the image.

Projection (Fourier-slice theorem): the 2D spectrum of ``P_A[V]`` at (kx, ky) is the 3D spectrum at
    ``Aᵀ (kx, ky, 0)``, sampled by trilinear interpolation (`kernels.backend().gather_slices`); samples
    with kx3 < 0 are read at −k and conjugated (Hermitian symmetry of a real volume). Trilinear
    interpolation multiplies the real-space volume by sinc²(r / P) along each axis; `prepare_volume`
    divides it out first (gridding correction, as RELION does). Origins are phase ramps:
    ``project(..., shifts_px=o)`` returns the spectrum of ``P(x + o)``, RELION's particle image.

Band-limited work (the search): a volume prepared with ``radius_px`` < N/2 holds only that band (a
smaller array, cheaper to share and to sample), and `BandGrid` lists the pixels of a smaller working box
(Fourier cropping keeps the integer frequency indices: index k stands for k / (N · pixel size) in both).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.kernels import SphereRows, backend


@dataclasses.dataclass(frozen=True)
class FourierVolume:
    """A volume's padded half spectrum in the band layout, ready for central slices.

    data: (2R+1, 2R+1, R+1) complex64 (may be a read-only view of MPI shared memory). box: N, the
    original box. padding: P / N. radius_px: the band held, image px (N/2 = everything to Nyquist).
    """

    data: np.ndarray
    box: int
    padding: int
    radius_px: float

    @classmethod
    def from_array(cls, data, box, padding, radius_px=None) -> "FourierVolume":
        return cls(data, int(box), int(padding), float(box // 2 if radius_px is None else radius_px))


def require_even_box(box: int, what: str = "box") -> None:
    """RELION refuses odd boxes for particles, and so does lorefine."""
    if box % 2:
        raise InputError(f"{what}: the box size must be even (RELION refuses odd boxes), got {box}")


def band_half_width(box: int, padding: int, radius_px=None) -> int:
    """R of the band layout holding radius ``radius_px`` (default N/2) of a box-N volume at this padding."""
    radius = box // 2 if radius_px is None else min(float(radius_px), box // 2)
    return int(math.ceil(padding * radius - 1e-9)) + 1


def band_shape(box: int, padding: int, radius_px=None) -> tuple[int, int, int]:
    r = band_half_width(box, padding, radius_px)
    return (2 * r + 1, 2 * r + 1, r + 1)


@functools.lru_cache(maxsize=4)
def sphere_rows(box: int, padding: int) -> SphereRows:
    """The `kernels.SphereRows` of a box-N spectrum at this padding (cached, read-only): the band layout's rows cut to the
    kx that trilinear insertion can reach. A sample within radius R − 1 (every frequency of the box, `band_grid`) at (x, y,
    z) has its corners at rows (Y, Z) with ``|Y| − 1 < |y|`` and ``|Z| − 1 < |z|`` (centred), so its corners' kx ≤ x + 1 ≤
    sqrt((R−1)² − (|Y|−1)₊² − (|Z|−1)₊²) + 1 < lengths: the half ball of radius about R, half the band layout's box (a
    reconstruction's accumulators at box 256: 0.86 GB instead of 1.64 GB)."""
    r = band_half_width(box, padding)
    k = np.abs(np.arange(-r, r + 1))
    reach = np.maximum(k - 1, 0) ** 2
    left = (r - 1) ** 2 - (reach[:, None] + reach[None, :])
    lengths = np.where(left >= 0, np.minimum(np.floor(np.sqrt(np.maximum(left, 0))).astype(np.int64) + 2, r + 1), 0)
    offsets = np.concatenate([[0], np.cumsum(lengths.ravel())[:-1]]).reshape(lengths.shape).astype(np.int64)
    for array in (offsets, lengths):
        array.flags.writeable = False
    return SphereRows(r, offsets, lengths, int(lengths.sum()))


def fft_order_index(n: int, p: int) -> np.ndarray:
    """(n,) the index, in FFT order on an axis of p ≥ n (the centre at 0), of each index of a centred axis of n (its
    centre at n // 2): what `centred_blocks` moves as slices, as one index array."""
    return (np.arange(n) - n // 2) % p


AXIS0_CHUNK_BYTES = 16 << 20  # the rows transformed at once along axis 0 of a padded spectrum


def fft_axis0_in_place(spectrum, inverse: bool = False) -> None:
    """In place: the complex FFT (unscaled) along axis 0 of a 3D complex64 ``spectrum``, a few rows of axis 1 at a time,
    so that no second array of its size is made."""
    p, rows, columns = spectrum.shape
    step = max(1, AXIS0_CHUNK_BYTES // (p * columns * spectrum.itemsize))
    for y0 in range(0, rows, step):
        spectrum[:, y0 : y0 + step] = backend().fft(spectrum[:, y0 : y0 + step], 0, inverse)


def _fill_band(volume, padding: int, data) -> None:
    """``data`` (band layout of half width R, zeroed) filled with the band of ``rfftn(ifftshift(pad(volume)))``: the cube (N,
    N, N) zero-padded to P = padding · N, in FFT order on every axis, after the gridding pre-correction (÷ sinc²(r/P) per
    axis). The 1D transforms of scipy's rfftn in its order (x, then z, then y; the same numbers), but only of the rows and
    columns that are not all zero, and only the planes of the band kept: no padded real volume, no padded spectrum."""
    b, n = backend(), volume.shape[0]
    p, r = padding * n, (data.shape[0] - 1) // 2
    lo, hi = min(r, p // 2), min(r, p // 2 - 1)  # frequencies −lo … hi exist on the centred axes
    kx = min(r, p // 2)
    correction = (np.sinc((np.arange(n) - n // 2) / p) ** 2).astype(np.float32)
    place = fft_order_index(n, p)
    rows = np.zeros((n, n, p), dtype=np.float32)  # the padded cube's rows that hold the volume
    rows[:, :, place] = volume / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
    along_x = b.rfftn(rows, axes=(2,), overwrite=True)[:, :, : kx + 1]
    del rows
    wanted = [(z, r + z) for z in range(hi + 1)] + [(p + z, r + z) for z in range(-lo, 0)]  # (FFT-order kz, band row)
    # The transforms along z and y act on each kx apart: a slab of kx at a time, so that the padded (P, N, kx) columns
    # are never whole (257 MiB at box 256)
    step = max(1, AXIS0_CHUNK_BYTES // (p * n * 8))
    for x0 in range(0, kx + 1, step):
        x1 = min(x0 + step, kx + 1)
        columns = np.zeros((p, n, x1 - x0), dtype=np.complex64)  # z, then the rows of y that hold the volume
        columns[place] = along_x[:, :, x0:x1]
        fft_axis0_in_place(columns)
        plane = np.zeros((p, x1 - x0), dtype=np.complex64)
        for z, row in wanted:
            plane[place] = columns[z]
            spectrum = b.fft(plane, 0)
            data[row, r - lo : r, x0:x1] = spectrum[p - lo :]
            data[row, r : r + hi + 1, x0:x1] = spectrum[: hi + 1]


def centred_blocks(n: int, p: int) -> list:
    """The cube of side n centred at index n//2, inside a cube of side p ≥ n in FFT order (the centre at index 0):
    eight (FFT-order slices, centred slices) pairs of plain slices that move one into the other (no fancy indexing)."""
    axis = [(slice(p - n // 2, p), slice(0, n // 2)), (slice(0, n - n // 2), slice(n // 2, n))]
    return [tuple(zip(*blocks)) for blocks in itertools.product(axis, axis, axis)]


def prepare_volume(volume, padding: int = 2, out=None, radius_px=None) -> FourierVolume:
    """Gridding pre-correction, zero padding, FFT: a `FourierVolume` of ``volume`` (N, N, N) float holding
    the band up to ``radius_px`` image px (default N/2, everything).

    out: optional preallocated ``band_shape(N, padding, radius_px)`` complex64 array to fill (e.g. shared memory).
    """
    v = np.asarray(volume, dtype=np.float32)
    n = v.shape[0]
    if v.shape != (n, n, n):
        raise InputError(f"volume: expected a cube, got shape {v.shape}")
    require_even_box(n, "volume")
    r = band_half_width(n, padding, radius_px)
    shape = (2 * r + 1, 2 * r + 1, r + 1)
    data = np.zeros(shape, dtype=np.complex64) if out is None else out
    if out is not None:
        out[...] = 0
    _fill_band(v, padding, data)
    return FourierVolume(data, n, padding, float(n // 2 if radius_px is None else min(radius_px, n // 2)))


@dataclasses.dataclass(frozen=True)
class BandGrid:
    """The pixels of a box's rfft2 layout within a radius: what a band-limited projection fills.

    box: the (working) box n; radius_px: the band (frequency index, same units in any box cropped from
    the original); kx, ky: (M,) float64 frequencies of the kept pixels; index: (M,) flat indices into
    ``(n, n//2+1)``.
    """

    box: int
    radius_px: float
    kx: np.ndarray
    ky: np.ndarray
    index: np.ndarray

    def unpack(self, values) -> np.ndarray:
        """(…, M) samples → (…, n, n//2+1) complex64 spectra, zero outside the band."""
        values = np.asarray(values)
        out = np.zeros(values.shape[:-1] + (self.box * (self.box // 2 + 1),), dtype=np.complex64)
        out[..., self.index] = values
        return out.reshape(values.shape[:-1] + (self.box, self.box // 2 + 1))


@functools.lru_cache(maxsize=16)
def band_grid(box: int, radius_px=None) -> BandGrid:
    """The pixels with ``|k| ≤ radius_px`` (default box/2) of a box's rfft2 layout (cached: do not modify)."""
    radius = box // 2 if radius_px is None else min(float(radius_px), box // 2)
    kx, ky = image_frequencies(box)
    index = np.nonzero((kx**2 + ky**2).ravel() <= radius**2 + 1e-9)[0]
    return BandGrid(int(box), float(radius), kx.ravel()[index].copy(), ky.ravel()[index].copy(), index)


def half_axis_multiplicity(n: int) -> np.ndarray:
    """(n//2+1,) float: how many coefficients of the full spectrum each index of the halved (last, rfft)
    axis stands for: 1 at k = 0 and k = n/2, 2 elsewhere (itself and its mirror). Sums over a half
    spectrum weighted by it are sums over the full spectrum (Parseval, power spectra, least squares)."""
    multiplicity = np.full(n // 2 + 1, 2.0)
    multiplicity[0] = 1.0
    if n % 2 == 0:
        multiplicity[-1] = 1.0
    return multiplicity


def image_frequencies(box: int):
    """(kx, ky) of lorefine's rfft2 layout in cycles per box: two (N, N//2+1) float arrays."""
    ky = np.fft.fftfreq(box, 1.0 / box)
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    return np.broadcast_to(kx[None, :], (box, box // 2 + 1)), np.broadcast_to(ky[:, None], (box, box // 2 + 1))


def project(fvol: FourierVolume, matrices, shifts_px=None, ctf=None, max_radius_px=None) -> np.ndarray:
    """Fourier projections of a prepared volume for n poses at once.

    matrices: (n, 3, 3) poses A. shifts_px: (n, 2) RELION origins o (px) or None; the result is the
    spectrum of ``P_A[V](x + o)``. ctf: (n, N, N//2+1) float or None, multiplied in. max_radius_px:
    keep only |k| ≤ this (Fourier px), default the volume's band. Returns (n, N, N//2+1) complex64.
    """
    radius = fvol.radius_px if max_radius_px is None else min(max_radius_px, fvol.radius_px)
    grid = band_grid(fvol.box, radius)
    return finish_projections(grid, project_band(fvol, matrices, grid), shifts_px, ctf)


def finish_projections(grid: BandGrid, samples, shifts_px=None, ctf=None) -> np.ndarray:
    """`project`'s spectra (n, N, N//2+1) complex64 from its samples at the pixels of ``grid`` (n, M) (`project_band`):
    unpacked, shifted (RELION origins ``shifts_px`` (n, 2) or None) and multiplied by ``ctf`` (n, N, N//2+1) or None.
    Image by image, so the samples of many poses may be finished a few at a time with the same result."""
    out = grid.unpack(samples)
    if shifts_px is not None:
        out = shift_images_ft(out, shifts_px)
    if ctf is not None:
        out = out * np.asarray(ctf, dtype=np.float32)
    return out


def project_band(fvol: FourierVolume, matrices, grid: BandGrid) -> np.ndarray:
    """The projections' samples at the pixels of ``grid`` (within the volume's band): (n, M) complex64."""
    if grid.radius_px > fvol.radius_px + 1e-9:
        raise ValueError(f"band grid radius {grid.radius_px} exceeds the volume's band {fvol.radius_px}")
    return backend().gather_slices(fvol.data, grid.kx, grid.ky, matrices, fvol.padding)


def phase_ramp(box: int, shifts_px) -> np.ndarray:
    """``exp(2πi k·s / N)`` for shifts (n, 2) px: (n, N, N//2+1) complex64; multiplying moves content by −s.
    (Separable: the product of a ky column and a kx row per shift.)"""
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    ky = np.fft.fftfreq(box, 1.0 / box)
    along_x = np.exp(2j * np.pi * s[:, 0, None] * kx[None] / box).astype(np.complex64)
    along_y = np.exp(2j * np.pi * s[:, 1, None] * ky[None] / box).astype(np.complex64)
    return along_y[:, :, None] * along_x[:, None, :]


def shift_images_ft(images_ft, shifts_px) -> np.ndarray:
    """Spectra of ``image(x + s)`` (content moved by −s) for images (n, N, N//2+1) and shifts (n, 2) px."""
    images_ft = np.asarray(images_ft)
    return images_ft * phase_ramp(images_ft.shape[-2], shifts_px)


def swap_quadrants(images) -> np.ndarray:
    """``fftshift`` (= ``ifftshift``, the box being even) over the last two axes by four block copies
    (numpy's roll is several times slower)."""
    images = np.asarray(images)
    h = images.shape[-1] // 2
    out = np.empty_like(images)
    out[..., :h, :h], out[..., h:, h:] = images[..., h:, h:], images[..., :h, :h]
    out[..., :h, h:], out[..., h:, :h] = images[..., h:, :h], images[..., :h, h:]
    return out


def spectra_in(nbytes: int, box: int) -> int:
    """How many images' spectra (lorefine's rfft2 layout, complex64: box·(box//2+1)·8 bytes each) fit in ``nbytes``,
    at least 1: the size of a batch of images worked through a bounded amount of memory at a time."""
    return max(1, int(nbytes) // (box * (box // 2 + 1) * np.dtype(np.complex64).itemsize))


def to_fourier(images) -> np.ndarray:
    """Real images (..., N, N) → lorefine's rfft2 layout (..., N, N//2+1) complex64."""
    images = np.asarray(images, dtype=np.float32)
    return backend().rfft2(swap_quadrants(images), overwrite=True).astype(np.complex64, copy=False)


def to_real(images_ft, box: int) -> np.ndarray:
    """lorefine's rfft2 layout (..., N, N//2+1) → real images (..., N, N) float32."""
    spectra = np.asarray(images_ft)
    if spectra.dtype != np.complex128:
        spectra = spectra.astype(np.complex64, copy=False)
    return swap_quadrants(backend().irfft2(spectra, (box, box))).astype(np.float32, copy=False)


def crop_spectrum(images_ft, box: int) -> np.ndarray:
    """Fourier cropping: the frequencies of a smaller box (..., n, n//2+1) from (..., N, N//2+1) spectra
    (the same frequency indices; the Nyquist row and column of the small box are set to 0)."""
    images_ft = np.asarray(images_ft)
    half = box // 2
    out = np.zeros(images_ft.shape[:-2] + (box, half + 1), dtype=images_ft.dtype)
    out[..., :half, :half] = images_ft[..., :half, :half]
    out[..., half + 1 :, :half] = images_ft[..., -half + 1 :, :half]
    return out


def upsampled_image(image_ft, box: int, size: int) -> np.ndarray:
    """Real images sampled on a finer grid of ``size`` ≥ box pixels (even) from their rfft2 spectra (…, box, box//2+1),
    without the Nyquist row and column: (…, size, size) float32, centre at index size/2, values on the scale of `to_real`."""
    half = box // 2
    image_ft = np.asarray(image_ft)
    up = np.zeros(image_ft.shape[:-2] + (size, size // 2 + 1), dtype=np.complex64)
    up[..., :half, :half] = image_ft[..., :half, :half]
    up[..., -half + 1 :, :half] = image_ft[..., -half + 1 :, :half]
    return to_real(up, size) * float((size / box) ** 2)
