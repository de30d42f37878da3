"""The hot kernels of lorefine behind one small interface: the seam for other array back-ends.

Everything the search and the reconstruction do per particle in bulk goes through the `Backend` below:

    gather_slices   central slices of a padded 3D spectrum (projection; `projection.fourier`)
    scatter_slices  its adjoint, accumulated (back-projection; `reconstruction.backproject`)
    sample_patches  an image turned and shifted, sampled over the pixels of a mask (the search turns
                    and shifts the *image*, so the references of a projection class serve every particle)
    sample_shift_grid  the same for every (angle, whole-pixel shift) pair, with each patch's sum and sum
                    of squares (the search's grid of shifts)
    correlate       rows of patches against rows of templates: one matrix product (the score)

Arrays are numpy arrays in the layouts documented in `lorefine_mpi.kernels.cpu`. A GPU back-end (CuPy)
implements the same five methods on device arrays and is returned by `backend()`; the pipeline,
the search and the reconstruction never call numba, BLAS or a GPU library directly.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.kernels import cpu


class CpuBackend:
    """numba kernels and BLAS, one thread each (MPI ranks are the parallelism)."""

    name = "cpu"

    def gather_slices(self, data, kx, ky, matrices, padding) -> np.ndarray:
        """(n, M) complex64 central-slice samples; see `cpu.gather_slices`."""
        matrices = np.ascontiguousarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        out = np.empty((len(matrices), len(kx)), dtype=np.complex64)
        cpu.gather_slices(data, np.ascontiguousarray(kx, np.float64), np.ascontiguousarray(ky, np.float64), matrices, float(padding), out)
        return out

    def scatter_slices(self, data, weight, kx, ky, matrices, padding, values, weights, steps=(0.0, 0.0)) -> None:
        """Accumulate into data/weight in place, each term rounded to ``steps`` (data, weight; 0: not
        rounded); see `cpu.scatter_slices`."""
        matrices = np.ascontiguousarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        cpu.scatter_slices(data, weight, np.ascontiguousarray(kx, np.float64), np.ascontiguousarray(ky, np.float64), matrices,
                           float(padding), np.ascontiguousarray(values), np.ascontiguousarray(weights), float(steps[0]), float(steps[1]))

    def sample_patches(self, upsampled, zx, zy, angles_rad, shifts_px, out=None, factor=2) -> np.ndarray:
        """(Q, J) float32: ``f(R2(β_q) z_j − u_q)`` for Q (angle, shift) pairs, from the image upsampled ``factor``
        times; see `cpu.sample_patches`."""
        angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
        shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        if out is None:
            out = np.empty((len(angles), len(zx)), dtype=np.float32)
        cpu.sample_patches(np.ascontiguousarray(upsampled, np.float32), float(factor), zx, zy, np.cos(angles), np.sin(angles),
                           np.ascontiguousarray(shifts[:, 0]), np.ascontiguousarray(shifts[:, 1]), out)
        return out

    def sample_shift_grid(self, upsampled, zx, zy, angles_rad, steps, factor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patches (T·S, J) float32 of T angles by S shifts ``steps`` (S, 2) int (x, y) in pixels of the fine
        grid (row t·S + s), with each row's sum and sum of squares (T·S,) float64; see `cpu.sample_shift_grid`."""
        angles = np.asarray(angles_rad, dtype=np.float64).reshape(-1)
        steps = np.asarray(steps, dtype=np.int64).reshape(-1, 2)
        q = len(angles) * len(steps)
        out, sums, squares = np.empty((q, len(zx)), dtype=np.float32), np.empty(q), np.empty(q)
        cpu.sample_shift_grid(np.ascontiguousarray(upsampled, np.float32), float(factor), zx, zy, np.cos(angles), np.sin(angles),
                              np.ascontiguousarray(steps[:, 0]), np.ascontiguousarray(steps[:, 1]), out, sums, squares)
        return out, sums, squares

    def correlate(self, patches, templates) -> np.ndarray:
        """(Q, K) float32 ``patches @ templatesᵀ`` for patches (Q, J) and templates (K, J), float32."""
        return patches @ templates.T


_BACKEND = CpuBackend()


def backend() -> CpuBackend:
    """The back-end in use (the CPU one; a GPU one would be chosen here)."""
    return _BACKEND
