"""The CPU back-end (``compute.backend: cpu``, the default): the hot kernels compiled with numba, FFTs by pocketfft
(scipy.fft), matrix products by BLAS, one thread each (MPI ranks are the parallelism). The interface and the shared
formulas are `lorefine_mpi.kernels.Backend`'s.

Band layout of a padded 3D half spectrum (shared by `gather_slices` and `scatter_slices`, so the two are
exact adjoints): an array ``(2R+1, 2R+1, R+1)`` indexed ``[kz, ky, kx]`` in padded-grid units, kz and ky
centred at index R, kx = 0 … R. Every sample within radius ``R − 1`` has its eight trilinear corners
inside, so the kernels need no bounds checks; a sample at ``kx < 0`` is read (or written) at ``−k``
conjugated (Hermitian symmetry of a real volume).

Measured at 128² (one core, a 12° cone of 150 slices, half band, padding 2): the gather costs 0.04 ms
per slice with the pixel loop outside the slice loop (the slices of a projection class touch the same
voxels, so they stay in cache), 0.13 ms with the slice loop outside, 0.73 ms as numpy fancy indexing
and about 1.3 ms with ``scipy.ndimage.map_coordinates`` (real and imaginary parts): numba it is.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft

from lorefine_mpi.kernels import Backend

_JIT = dict(cache=True, nogil=True, boundscheck=False)


@numba.njit(fastmath=True, **_JIT)
def gather_slices(data, kx, ky, matrices, padding, out):
    """Central slices by trilinear gather. data: band layout complex64; kx, ky: (M,) float64 image
    frequencies (image px); matrices: (n, 3, 3) float64 poses; out: (n, M) complex64, filled."""
    centre = (data.shape[0] - 1) // 2
    n = matrices.shape[0]
    rows = np.empty((n, 6))
    for i in range(n):
        for c in range(3):
            rows[i, c] = matrices[i, 0, c] * padding
            rows[i, 3 + c] = matrices[i, 1, c] * padding
    for j in range(kx.shape[0]):
        u, v = kx[j], ky[j]
        for i in range(n):
            x = u * rows[i, 0] + v * rows[i, 3]
            y = u * rows[i, 1] + v * rows[i, 4]
            z = u * rows[i, 2] + v * rows[i, 5]
            conj = x < 0.0
            if conj:
                x, y, z = -x, -y, -z
            y += centre
            z += centre
            x0, y0, z0 = int(x), int(y), int(z)
            fx, fy, fz = np.float32(x - x0), np.float32(y - y0), np.float32(z - z0)
            gx, gy, gz = np.float32(1.0) - fx, np.float32(1.0) - fy, np.float32(1.0) - fz
            a = (data[z0, y0, x0] * gx + data[z0, y0, x0 + 1] * fx) * gy + (data[z0, y0 + 1, x0] * gx + data[z0, y0 + 1, x0 + 1] * fx) * fy
            b = (data[z0 + 1, y0, x0] * gx + data[z0 + 1, y0, x0 + 1] * fx) * gy + (
                data[z0 + 1, y0 + 1, x0] * gx + data[z0 + 1, y0 + 1, x0 + 1] * fx
            ) * fy
            value = a * gz + b * fz
            out[i, j] = value.conjugate() if conj else value


@numba.njit(**_JIT)
def _slice_point(rows, i, u, v, centre):
    """Band-layout coordinates (x, y, z) of image frequency (u, v) of slice i, and whether it is read
    conjugated (kx < 0 mirrored to −k)."""
    x = u * rows[i, 0] + v * rows[i, 3]
    y = u * rows[i, 1] + v * rows[i, 4]
    z = u * rows[i, 2] + v * rows[i, 5]
    if x < 0.0:
        return -x, centre - y, centre - z, True
    return x, y + centre, z + centre, False


SCATTER_TILE = 8  # voxels per side of the (z, y) tiles the samples are sorted into


@numba.njit(**_JIT)
def scatter_slices(data, weight, offsets, kx, ky, matrices, padding, values, weights, data_step, weight_step):
    """The adjoint of `gather_slices`, accumulated: ``data += Σ trilinear · values`` (conjugated where
    read conjugated) and ``weight += Σ trilinear · weights``. data: (S,) complex128 and weight: (S,) float64, the rows of
    a band layout stored one after another, row (kz, ky) from ``offsets[kz, ky]`` ((2R+1, 2R+1) int64: `kernels.SphereRows`,
    long enough for every sample's corners); values: (n, M) complex; weights: (n, M) float (CTF², or 1).

    With ``data_step``/``weight_step`` > 0 every term is rounded to a multiple of the step before it is
    added (to the nearest, ties up), so that sums on that grid are exact in any order (`refine.engine.ExactSum`).

    Samples land all over a volume far larger than the caches, and a read-modify-write of a line in
    memory costs ten times one in cache, so the samples are first sorted (counting sort) into tiles of
    ``SCATTER_TILE``² (z, y) rows and then added tile by tile; within a tile the order is the input's, so
    the result is deterministic (2× faster at 128² than adding in input order).
    """
    centre = (offsets.shape[0] - 1) // 2
    n, m = matrices.shape[0], kx.shape[0]
    rows = np.empty((n, 6))
    for i in range(n):
        for c in range(3):
            rows[i, c] = matrices[i, 0, c] * padding
            rows[i, 3 + c] = matrices[i, 1, c] * padding
    per_row = offsets.shape[1] // SCATTER_TILE + 1
    n_tiles = (offsets.shape[0] // SCATTER_TILE + 1) * per_row
    start = np.zeros(n_tiles + 1, np.int64)
    for i in range(n):
        for j in range(m):
            x, y, z, conj = _slice_point(rows, i, kx[j], ky[j], centre)
            start[(int(z) // SCATTER_TILE) * per_row + int(y) // SCATTER_TILE + 1] += 1
    for t in range(n_tiles):
        start[t + 1] += start[t]
    sample = np.empty(n * m, np.int64)
    packed = np.empty(n * m, np.complex128)
    packed_w = np.empty(n * m)
    fill = start[:-1].copy()
    for i in range(n):
        for j in range(m):
            x, y, z, conj = _slice_point(rows, i, kx[j], ky[j], centre)
            t = (int(z) // SCATTER_TILE) * per_row + int(y) // SCATTER_TILE
            f = fill[t]
            sample[f] = i * m + j
            packed[f] = complex(values[i, j]).conjugate() if conj else complex(values[i, j])
            packed_w[f] = weights[i, j]
            fill[t] += 1
    for f in range(n * m):
        i = sample[f] // m
        j = sample[f] - i * m
        x, y, z, conj = _slice_point(rows, i, kx[j], ky[j], centre)
        x0, y0, z0 = int(x), int(y), int(z)
        fx, fy, fz = x - x0, y - y0, z - z0
        value, w = packed[f], packed_w[f]
        for dz in range(2):
            wz = fz if dz else 1.0 - fz
            for dy in range(2):
                wzy = wz * (fy if dy else 1.0 - fy)
                t0, t1 = wzy * (1.0 - fx), wzy * fx
                at = offsets[z0 + dz, y0 + dy] + x0
                data[at] += _on_grid_complex(t0 * value, data_step)
                data[at + 1] += _on_grid_complex(t1 * value, data_step)
                weight[at] += _on_grid(t0 * w, weight_step)
                weight[at + 1] += _on_grid(t1 * w, weight_step)


@numba.njit(**_JIT)
def _on_grid(x, step):
    """x rounded to the nearest multiple of step (ties up); x itself when step is 0."""
    if step > 0.0:
        return math.floor(x / step + 0.5) * step
    return x


@numba.njit(**_JIT)
def _on_grid_complex(z, step):
    return complex(_on_grid(z.real, step), _on_grid(z.imag, step))


@numba.njit(fastmath=True, **_JIT)
def sample_patches(upsampled, factor, zx, zy, cos, sin, shift_x, shift_y, out):
    """Bilinear samples of an image at turned and shifted coordinates.

    upsampled: (f·n, f·n) float32, the image on a grid ``factor`` (f) times as fine, its centre at index f·n/2; zx, zy: (J,)
    coordinates (image px from the centre); cos, sin, shift_x, shift_y: (Q,) one transform each; out:
    (Q, J) float32 with ``out[q, j] = f(R2(β_q) z_j − u_q)``, R2(β) = [[c, s], [−s, c]] acting on (x, y);
    samples outside the image are 0.
    """
    size = upsampled.shape[0]
    half = size // 2
    for q in range(cos.shape[0]):
        c, s, ux, uy = cos[q], sin[q], shift_x[q], shift_y[q]
        for j in range(zx.shape[0]):
            x = factor * (c * zx[j] + s * zy[j] - ux) + half
            y = factor * (-s * zx[j] + c * zy[j] - uy) + half
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            if x0 < 0 or y0 < 0 or x0 + 1 >= size or y0 + 1 >= size:
                out[q, j] = 0.0
                continue
            fx = np.float32(x - x0)
            fy = np.float32(y - y0)
            top = upsampled[y0, x0] * (np.float32(1.0) - fx) + upsampled[y0, x0 + 1] * fx
            bottom = upsampled[y0 + 1, x0] * (np.float32(1.0) - fx) + upsampled[y0 + 1, x0 + 1] * fx
            out[q, j] = top * (np.float32(1.0) - fy) + bottom * fy


@numba.njit(fastmath=True, **_JIT)
def sample_shift_grid(upsampled, factor, zx, zy, cos, sin, steps_x, steps_y, out, sums, squares):
    """`sample_patches` for every pair of T angles and S shifts that are whole pixels of the fine grid.

    steps_x, steps_y: (S,) int, the shifts in pixels of the fine grid; out: (T·S, J) float32 with row
    ``t·S + s`` = ``f(R2(β_t) z_j − u_s)``; sums, squares: (T·S,) float64, each row's Σ and Σ² (for Eq. 1's
    mean and norm over the mask). A whole-pixel shift moves every sample by the same whole number of fine
    pixels, so the bilinear weights and the flat index of a mask pixel's first corner are those of the
    unshifted turn: they are computed once per (angle, pixel), and each shift only adds an offset to the
    index and reads four values (checked against the image's edges only when a shift reaches them; 0 there).
    """
    size = upsampled.shape[0]
    half = size // 2
    flat = upsampled.reshape(-1)
    n_j, n_s = zx.shape[0], steps_x.shape[0]
    first = np.empty(n_j, np.int64)
    x0 = np.empty(n_j, np.int64)
    y0 = np.empty(n_j, np.int64)
    w = np.empty((4, n_j), np.float32)
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    one = np.float32(1.0)
    for t in range(cos.shape[0]):
        c, s = cos[t], sin[t]
        for j in range(n_j):
            x = factor * (c * zx[j] + s * zy[j]) + half
            y = factor * (-s * zx[j] + c * zy[j]) + half
            xi, yi = int(np.floor(x)), int(np.floor(y))
            x0[j], y0[j], first[j] = xi, yi, yi * size + xi
            gx, gy = np.float32(x - xi), np.float32(y - yi)
            w0[j], w1[j] = (one - gx) * (one - gy), gx * (one - gy)
            w2[j], w3[j] = (one - gx) * gy, gx * gy
        x_lo, x_hi, y_lo, y_hi = x0.min(), x0.max(), y0.min(), y0.max()
        for k in range(n_s):
            row = t * n_s + k
            sx, sy = steps_x[k], steps_y[k]
            r = out[row]
            if x_lo - sx >= 0 and y_lo - sy >= 0 and x_hi - sx + 1 < size and y_hi - sy + 1 < size:
                offset = -(sy * size + sx)
                for j in range(n_j):
                    i = first[j] + offset
                    r[j] = w0[j] * flat[i] + w1[j] * flat[i + 1] + w2[j] * flat[i + size] + w3[j] * flat[i + size + 1]
            else:
                for j in range(n_j):
                    xs, ys = x0[j] - sx, y0[j] - sy
                    if xs < 0 or ys < 0 or xs + 1 >= size or ys + 1 >= size:
                        r[j] = 0.0
                    else:
                        i = ys * size + xs
                        r[j] = w0[j] * flat[i] + w1[j] * flat[i + 1] + w2[j] * flat[i + size] + w3[j] * flat[i + size + 1]
            total, total2 = 0.0, 0.0
            for j in range(n_j):
                value = np.float64(r[j])
                total += value
                total2 += value * value
            sums[row], squares[row] = total, total2


class CpuBackend(Backend):
    """numba kernels, scipy.fft and BLAS, one thread each."""

    name = "cpu"

    def rfft2(self, images, overwrite: bool = False):
        return scipy.fft.rfft2(images, workers=1, overwrite_x=overwrite)

    def irfft2(self, spectra, shape):
        return scipy.fft.irfft2(spectra, s=shape, workers=1)

    def rfftn(self, volumes, axes=(0, 1, 2), overwrite: bool = False):
        return scipy.fft.rfftn(volumes, axes=axes, workers=1, overwrite_x=overwrite)

    def irfftn(self, spectra, shape, axes=(0, 1, 2), scaled: bool = True):
        return scipy.fft.irfftn(spectra, s=shape, axes=axes, workers=1, norm="backward" if scaled else "forward")

    def fft(self, spectra, axis: int, inverse: bool = False):
        if inverse:
            return scipy.fft.ifft(spectra, axis=axis, workers=1, norm="forward")
        return scipy.fft.fft(spectra, axis=axis, workers=1)

    def fast_size(self, n: int) -> int:
        return scipy.fft.next_fast_len(int(n), real=True)

    def gather_slices(self, data, kx, ky, matrices, padding) -> np.ndarray:
        matrices = np.ascontiguousarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        out = np.empty((len(matrices), len(kx)), dtype=np.complex64)
        gather_slices(data, np.ascontiguousarray(kx, np.float64), np.ascontiguousarray(ky, np.float64), matrices, float(padding), out)
        return out

    def scatter_slices(self, data, weight, kx, ky, matrices, padding, values, weights, steps=(0.0, 0.0), rows=None) -> None:
        matrices = np.ascontiguousarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        data, weight, rows = self.flat_rows(data, weight, rows)
        scatter_slices(data, weight, rows.offsets, np.ascontiguousarray(kx, np.float64), np.ascontiguousarray(ky, np.float64), matrices,
                       float(padding), np.ascontiguousarray(values), np.ascontiguousarray(weights), float(steps[0]), float(steps[1]))

    def sample_patches(self, upsampled, zx, zy, angles_rad, shifts_px, factor=2) -> np.ndarray:
        angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
        shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        out = np.empty((len(angles), len(zx)), dtype=np.float32)
        sample_patches(np.ascontiguousarray(upsampled, np.float32), float(factor), zx, zy, np.cos(angles), np.sin(angles),
                       np.ascontiguousarray(shifts[:, 0]), np.ascontiguousarray(shifts[:, 1]), out)
        return out

    def sample_shift_grid(self, upsampled, zx, zy, angles_rad, steps, factor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
        steps = np.asarray(steps, dtype=np.int64).reshape(-1, 2)
        q = len(angles) * len(steps)
        out, sums, squares = np.empty((q, len(zx)), dtype=np.float32), np.empty(q), np.empty(q)
        sample_shift_grid(np.ascontiguousarray(upsampled, np.float32), float(factor), zx, zy, np.cos(angles), np.sin(angles),
                          np.ascontiguousarray(steps[:, 0]), np.ascontiguousarray(steps[:, 1]), out, sums, squares)
        return out, sums, squares


BACKEND = CpuBackend()
