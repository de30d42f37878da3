"""The reference back-end (``compute.backend: numpy``): every kernel in plain numpy, slow and obvious.

It exists to be compared with: the tests run each kernel of `kernels.cpu` against this one (they agree to float32
rounding), and a whole refinement with it ends with the CPU back-end's poses. Each kernel is written the direct
way — all samples at once with numpy's fancy indexing and ``np.add.at``, in double precision — and the FFTs are
numpy's own (`numpy.fft`), not scipy's. The formulas shared by every back-end are `kernels.Backend`'s.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.kernels import Backend


def _slice_coordinates(data, kx, ky, matrices, padding):
    """(data: an array whose first axis is the band layout's kz, 2R+1.) Band-layout coordinates (x, y, z) (n, M) float64 of the frequencies (kx, ky) of each pose's central slice, and
    whether each is read at −k conjugated (kx < 0: Hermitian symmetry of a real volume)."""
    centre = (data.shape[0] - 1) // 2
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3) * float(padding)
    k = np.stack([np.asarray(kx, np.float64), np.asarray(ky, np.float64)])  # (2, M)
    # the slice of pose A holds the volume's spectrum at Aᵀ (kx, ky, 0): rows 0 and 1 of A
    x, y, z = (np.einsum("nj,jm->nm", m[:, :2, c], k) for c in range(3))
    conj = x < 0.0
    x, y, z = np.where(conj, -x, x), np.where(conj, -y, y) + centre, np.where(conj, -z, z) + centre
    return x, y, z, conj


def _corners(x, y, z):
    """The eight trilinear corners of each point: [(iz, iy, ix, weight)] with float64 weights."""
    x0, y0, z0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64), np.floor(z).astype(np.int64)
    fx, fy, fz = x - x0, y - y0, z - z0
    out = []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (fz if dz else 1 - fz) * (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
                out.append((z0 + dz, y0 + dy, x0 + dx, w))
    return out


def _bilinear(image, x, y):
    """Bilinear samples of ``image`` (size, size) at fine-grid coordinates (x, y) (any shape), 0 where a corner falls
    outside the image."""
    size = image.shape[0]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < size) & (y0 + 1 < size)
    xs, ys = np.where(inside, x0, 0), np.where(inside, y0, 0)
    f = np.asarray(image, dtype=np.float64)
    value = (f[ys, xs] * (1 - fx) + f[ys, xs + 1] * fx) * (1 - fy) + (f[ys + 1, xs] * (1 - fx) + f[ys + 1, xs + 1] * fx) * fy
    return np.where(inside, value, 0.0)


class NumpyBackend(Backend):
    """Plain numpy: the oracle of `kernels.cpu`."""

    name = "numpy"

    def rfft2(self, images, overwrite: bool = False):
        return np.fft.rfft2(images)

    def irfft2(self, spectra, shape):
        return np.fft.irfft2(spectra, s=shape)

    def rfftn(self, volumes, axes=(0, 1, 2), overwrite: bool = False):
        return np.fft.rfftn(volumes, axes=axes)

    def irfftn(self, spectra, shape, axes=(0, 1, 2), scaled: bool = True):
        return np.fft.irfftn(spectra, s=shape, axes=axes, norm="backward" if scaled else "forward")

    def fft(self, spectra, axis: int, inverse: bool = False):
        return np.fft.ifft(spectra, axis=axis, norm="forward") if inverse else np.fft.fft(spectra, axis=axis)

    def fast_size(self, n: int) -> int:
        """The smallest 2^a 3^b 5^c ≥ n."""
        size = int(n)
        while True:
            m = size
            for p in (2, 3, 5):
                while m % p == 0:
                    m //= p
            if m == 1:
                return size
            size += 1

    def gather_slices(self, data, kx, ky, matrices, padding) -> np.ndarray:
        x, y, z, conj = _slice_coordinates(data, kx, ky, matrices, padding)
        value = sum(w * data[iz, iy, ix].astype(np.complex128) for iz, iy, ix, w in _corners(x, y, z))
        return np.where(conj, np.conj(value), value).astype(np.complex64)

    def scatter_slices(self, data, weight, kx, ky, matrices, padding, values, weights, steps=(0.0, 0.0), rows=None) -> None:
        data, weight, rows = self.flat_rows(data, weight, rows)
        x, y, z, conj = _slice_coordinates(rows.offsets, kx, ky, matrices, padding)
        values = np.asarray(values, dtype=np.complex128)
        values = np.where(conj, np.conj(values), values)
        weights = np.asarray(weights, dtype=np.float64)

        def on_grid(term, step):  # to the nearest multiple of step, ties up (`refine.engine.ExactSum`)
            return np.floor(term / step + 0.5) * step if step > 0 else term

        for iz, iy, ix, w in _corners(x, y, z):
            if (ix >= rows.lengths[iz, iy]).any():
                raise ValueError("a sample's corner lies beyond its row of the layout")
            at = rows.offsets[iz, iy] + ix
            term = w * values
            np.add.at(data, at, on_grid(term.real, steps[0]) + 1j * on_grid(term.imag, steps[0]))
            np.add.at(weight, at, on_grid(w * weights, steps[1]))

    def sample_patches(self, upsampled, zx, zy, angles_rad, shifts_px, factor=2) -> np.ndarray:
        angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1, 1)
        shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        c, s = np.cos(angles), np.sin(angles)
        half = upsampled.shape[0] // 2
        x = factor * (c * zx[None] + s * zy[None] - shifts[:, :1]) + half
        y = factor * (-s * zx[None] + c * zy[None] - shifts[:, 1:]) + half
        return _bilinear(upsampled, x, y).astype(np.float32)

    def sample_shift_grid(self, upsampled, zx, zy, angles_rad, steps, factor):
        angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
        steps = np.asarray(steps, dtype=np.int64).reshape(-1, 2)
        # a whole fine-pixel shift u moves the sample at fine coordinate p to p − u
        turned = np.repeat(angles, len(steps))
        shifts = np.tile(steps, (len(angles), 1)) / float(factor)  # in working-grid px
        out = self.sample_patches(upsampled, zx, zy, turned, shifts, factor)
        wide = out.astype(np.float64)
        return out, wide.sum(axis=1), (wide * wide).sum(axis=1)


BACKEND = NumpyBackend()
