"""The array back-end: every per-unit array operation of the search and the insertion goes through one object.

The refinement pipeline (`projection`, `search`, `reconstruction`, `geometry.volumes`) never calls numba,
scipy.fft or BLAS itself: it asks `backend()` for

    FFTs            rfft2 / irfft2 (batches of images), rfftn / irfftn (volumes), fast_size
    Fourier slices  gather_slices (projection), scatter_slices (its adjoint, accumulated: back-projection)
    the CTF         ctf (RELION's formula, for a batch of particles)
    sampling        sample_patches (an image turned and shifted over the pixels of a mask), sample_shift_grid
                    (the same for every (angle, whole-pixel shift) pair, with each patch's sums)
    scores          correlate (one matrix product), and the search's scores for a whole work unit at once:
                    grid_scores, candidate_cubes, point_scores (one list entry per particle: the unit's particles ×
                    their candidates), composite scores where the rest of the complex is kept (paper Eqs. 2-8)
    likelihood      profile_log_likelihood / linear_log_likelihood of whole score cubes

A back-end is one file: `kernels.cpu` (numba kernels, pocketfft through scipy.fft and BLAS, one thread each:
MPI ranks are the parallelism; the default) and `kernels.reference` (pure numpy, slow and obvious: the oracle the
tests compare the other against). The formulas that are array arithmetic only (the CTF, Eq. 1's normalisation,
the likelihoods, the per-unit loops over particles) are written once here against ``self.xp`` (the array module),
so a CuPy back-end is `kernels/cupy.py`: ``xp = cupy``, its FFTs and its four kernels, nothing else.

Chosen by ``compute.backend`` in the config (`use_backend`); arrays are in the layouts documented in `kernels.cpu`.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class SphereRows:
    """The rows of a padded 3D half spectrum as the scatter kernels read them: the band layout's (kz, ky) rows (shape
    (2R+1, 2R+1, R+1), centred at R), row (z, y) holding kx = 0 … lengths[z, y] − 1 at ``offsets[z, y] + kx`` of a flat
    array of ``size``. The band layout itself (`band_rows`: every row whole), or its rows cut to the half ball that
    insertion reaches (`projection.fourier.sphere_rows`)."""

    half_width: int
    offsets: np.ndarray  # (2R+1, 2R+1) int64
    lengths: np.ndarray  # (2R+1, 2R+1) int64
    size: int


def band_rows(shape) -> SphereRows:
    """The rows of a band-layout array of ``shape`` (2R+1, 2R+1, R+1) as `SphereRows` of its flat view (every row whole)."""
    lengths = np.full(shape[:2], shape[2], dtype=np.int64)
    offsets = (np.arange(shape[0] * shape[1], dtype=np.int64) * shape[2]).reshape(shape[:2])
    return SphereRows((shape[0] - 1) // 2, offsets, lengths, int(np.prod(shape)))


class Backend(abc.ABC):
    """The interface (module docstring), with the formulas shared by every back-end."""

    name = ""
    xp = np  # the array module the formulas run on

    # -- FFTs ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def rfft2(self, images, overwrite: bool = False):
        """rfft2 over the last two axes (single precision in, single out)."""

    @abc.abstractmethod
    def irfft2(self, spectra, shape):
        """irfft2 over the last two axes to real images of ``shape`` (N, N)."""

    @abc.abstractmethod
    def rfftn(self, volumes, axes=(0, 1, 2), overwrite: bool = False):
        """rfftn over ``axes``."""

    @abc.abstractmethod
    def irfftn(self, spectra, shape, axes=(0, 1, 2), scaled: bool = True):
        """irfftn over ``axes`` to real arrays of ``shape``; divided by the number of points unless ``scaled`` is False."""

    @abc.abstractmethod
    def fft(self, spectra, axis: int, inverse: bool = False):
        """The complex FFT along one axis, not divided by anything in either direction (single precision in, single out)."""

    @abc.abstractmethod
    def fast_size(self, n: int) -> int:
        """The smallest size ≥ n whose real FFT is fast."""

    # -- Fourier slices and image sampling (the kernels) -------------------------------------
    @abc.abstractmethod
    def gather_slices(self, data, kx, ky, matrices, padding):
        """(n, M) complex64 central-slice samples of a band-layout spectrum (`kernels.cpu.gather_slices`)."""

    @abc.abstractmethod
    def scatter_slices(self, data, weight, kx, ky, matrices, padding, values, weights, steps=(0.0, 0.0), rows=None) -> None:
        """Accumulate into data/weight in place, each term rounded to ``steps`` (data, weight; 0: not rounded)
        (`kernels.cpu.scatter_slices`): band-layout arrays, or with ``rows`` (`SphereRows`) flat ones
        in that layout."""

    @staticmethod
    def flat_rows(data, weight, rows):
        """(data, weight, rows) as the scatter kernels take them: flat arrays and their rows (a band layout's own
        rows when ``rows`` is None)."""
        if rows is None:
            rows = band_rows(data.shape)
        if not (data.flags.c_contiguous and weight.flags.c_contiguous):
            raise ValueError("the accumulators must be C-contiguous (their flat views are written)")
        if data.size != rows.size or weight.size != rows.size:
            raise ValueError(f"accumulators of {data.size} and {weight.size} values for a layout of {rows.size}")
        return data.reshape(-1), weight.reshape(-1), rows

    @abc.abstractmethod
    def sample_patches(self, upsampled, zx, zy, angles_rad, shifts_px, factor=2):
        """(Q, J) float32: ``f(R2(β_q) z_j − u_q)`` for Q (angle, shift) pairs, from the image upsampled ``factor``
        times (`kernels.cpu.sample_patches`)."""

    @abc.abstractmethod
    def sample_shift_grid(self, upsampled, zx, zy, angles_rad, steps, factor):
        """Patches (T·S, J) float32 of T angles by S shifts ``steps`` (S, 2) int (x, y) in pixels of the fine
        grid (row t·S + s), with each row's sum and sum of squares (T·S,) float64 (`kernels.cpu.sample_shift_grid`)."""

    # -- the CTF ------------------------------------------------------------------------------
    def ctf(self, kx, ky, pixel_size_angstrom, defocus_u_angstrom, defocus_v_angstrom, defocus_angle_rad, voltage_kv, cs_mm,
            amplitude_contrast, phase_shift_rad, bfactor_angstrom2, scale, box=None):
        """RELION's CTF (`projection.ctf`) of n particles at the frequencies ``kx``, ``ky`` (…) in cycles per box:
        every parameter an (n, 1, …) float64 array (one 1 per axis of kx); returns (n, …) float32. box: the image's box
        (default ``kx.shape[0]``, kx the whole rfft2 grid; give it for a selection of its frequencies). Elementwise, so
        the CTF at a selection is the same numbers as the whole grid's at those frequencies."""
        xp = self.xp
        box = kx.shape[0] if box is None else box
        kx = kx[None] / (box * pixel_size_angstrom)
        ky = ky[None] / (box * pixel_size_angstrom)
        k2 = kx**2 + ky**2
        azimuth = xp.arctan2(ky, kx)
        volts = voltage_kv * 1e3
        lam = 12.2643247 / xp.sqrt(volts * (1.0 + volts * 0.978466e-6))
        defocus = 0.5 * (defocus_u_angstrom + defocus_v_angstrom) + 0.5 * (defocus_u_angstrom - defocus_v_angstrom) * xp.cos(
            2.0 * (azimuth - defocus_angle_rad))
        chi = (-xp.pi * lam * defocus * k2 + 0.5 * xp.pi * cs_mm * 1e7 * lam**3 * k2**2 - phase_shift_rad
               - xp.arctan(amplitude_contrast / xp.sqrt(1.0 - amplitude_contrast**2)))
        ctf = -xp.sin(chi) * scale
        ctf = xp.where(bfactor_angstrom2 != 0, ctf * xp.exp(-bfactor_angstrom2 * k2 / 4.0), ctf)
        return ctf.astype(xp.float32)

    # -- Eq. 1 --------------------------------------------------------------------------------
    def correlate(self, patches, templates):
        """(Q, K) float32 ``patches @ templatesᵀ`` for patches (Q, J) and templates (K, J), float32."""
        return patches @ templates.T

    def centre_rows(self, rows):
        """Rows (Q, J) less their means, float32, and their squared norms (Q,) float64."""
        xp = self.xp
        x = xp.asarray(rows, dtype=xp.float32)
        centred = x - x.mean(axis=1, dtype=xp.float64).astype(xp.float32)[:, None]
        return centred, xp.einsum("ij,ij->i", centred, centred, dtype=xp.float64)

    def inverse_norms(self, norm2):
        """1 / sqrt(norm2) per row (Q,) float32, 0 where the squared norm is 0 (a constant row)."""
        xp = self.xp
        return xp.where(norm2 > 0, 1.0 / xp.sqrt(xp.where(norm2 > 0, norm2, 1.0)), 0.0).astype(xp.float32)

    def normalise_rows(self, rows):
        """Rows (Q, J) centred and scaled to unit norm (a constant row becomes 0): float32."""
        centred, norm2 = self.centre_rows(rows)
        return centred * self.inverse_norms(norm2)[:, None]

    def patch_scale(self, patches, moments=None):
        """1 / the norm about its mean, ``sqrt(Σp² − (Σp)²/J)``, of each raw patch (Q, J): (Q,) float32, 0 for a
        constant patch. moments: (Σp, Σp²) per row (Q,) float64 when the sampling summed them already, or None."""
        xp = self.xp
        if moments is None:
            s1 = patches.sum(axis=1, dtype=xp.float64)
            s2 = xp.einsum("ij,ij->i", patches, patches).astype(xp.float64)
        else:
            s1, s2 = moments
        return self.inverse_norms(s2 - s1 * s1 / patches.shape[1])

    def patch_ccc(self, patches, templates, moments=None):
        """Eq. 1 of raw patches (Q, J) against normalised templates (K, J): (Q, K) float32 (`search.score`)."""
        out = self.correlate(patches, templates)
        out *= self.patch_scale(patches, moments)[:, None]
        return out

    def composite_ccc(self, patches, rest, templates):
        """Eq. 1 of each patch h (Q, J) against ``g + r`` for every template g (K, J) and the rest r (Q, J) sampled
        like h: (Q, K) float32 (`search.score.composite_ccc`)."""
        xp = self.xp
        h, h2 = self.centre_rows(patches)
        r, r2 = self.centre_rows(rest)
        g, g2 = self.centre_rows(templates)
        numerator = self.correlate(h, g) + xp.einsum("ij,ij->i", h, r)[:, None]
        variance = g2[None, :] + 2.0 * self.correlate(r, g) + r2[:, None]
        denominator = xp.sqrt(h2[:, None] * xp.maximum(variance, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return xp.where(denominator > 0, numerator / xp.where(denominator > 0, denominator, 1.0), 0.0).astype(xp.float32)

    # -- a work unit's scores, one list entry per particle -------------------------------------
    def grid_scores(self, images, rests, zx, zy, angles, steps, factor, templates) -> list:
        """Eq. 1 of every particle's image (fine grid, ``images[i]``) turned by each of its angles (T_i,) and moved by
        each whole-pixel shift ``steps`` (S, 2) of the fine grid, against its templates (K_i, J): a list of (T_i, S,
        K_i) float32. rests[i]: the rest of the complex sampled like the image (composite score) or None."""
        out = []
        for image, rest, angle, template in zip(images, rests, angles, templates):
            patches, sums, squares = self.sample_shift_grid(image, zx, zy, angle, steps, factor)
            if rest is not None:
                rest_patches = self.sample_shift_grid(rest, zx, zy, angle, steps, factor)[0]
                scores = self.composite_ccc(patches, rest_patches, template)
            else:
                scores = self.patch_ccc(patches, template, moments=(sums, squares))
            out.append(scores.reshape(len(angle), len(steps), -1))
        return out

    def candidate_cubes(self, images, zx, zy, angles, steps, factor, templates, runs) -> list:
        """Eq. 1 of every candidate (in-plane angle t, direction k, shift s) of every particle, where the candidates of
        an angle are a run of consecutive templates: a list of (T_i, K_i, S) float32 cubes, −inf off the runs.
        templates[i]: (K_i, J) in run order; runs[i]: (T_i, 2) [first, end) template of each angle's run."""
        xp = self.xp
        out = []
        for image, angle, template, run in zip(images, angles, templates, runs):
            patches, sums, squares = self.sample_shift_grid(image, zx, zy, angle, steps, factor)
            scale = self.patch_scale(patches, (sums, squares))
            n_s = len(steps)
            cube = xp.full((len(angle), len(template), n_s), -xp.inf, dtype=xp.float32)
            for t, (lo, hi) in enumerate(run):
                rows = slice(t * n_s, (t + 1) * n_s)
                rho = self.correlate(patches[rows], template[lo:hi])
                rho *= scale[rows, None]
                cube[t, lo:hi] = rho.T
            out.append(cube)
        return out

    def point_scores(self, images, rests, zx, zy, angles, shifts_px, factor, templates) -> list:
        """Eq. 1 of every particle's image turned by each of its angles (Q_i,) and moved by the matching image-frame
        shift (Q_i, 2) in working-grid px, against its templates (K_i, J): a list of (Q_i, K_i) float32."""
        out = []
        for image, rest, angle, shift, template in zip(images, rests, angles, shifts_px, templates):
            patches = self.sample_patches(image, zx, zy, angle, shift, factor=factor)
            if rest is None:
                out.append(self.patch_ccc(patches, template))
            else:
                out.append(self.composite_ccc(patches, self.sample_patches(rest, zx, zy, angle, shift, factor=factor), template))
        return out

    # -- likelihoods of score cubes (`search.score`) -------------------------------------------
    def profile_log_likelihood(self, rho, n_pixels: float, rho_max: float):
        """``−(J/2)·log(1 − ρ₊²)`` of a score cube in single precision, −inf where ρ is −inf (not a candidate)."""
        xp = self.xp
        rho = xp.asarray(rho, dtype=xp.float32)
        out = xp.clip(rho, xp.float32(0.0), xp.float32(rho_max))
        xp.multiply(out, out, out=out)
        xp.negative(out, out=out)
        xp.log1p(out, out=out)
        out *= xp.float32(-0.5 * n_pixels)
        out[xp.isneginf(rho)] = -xp.inf
        return out

    def linear_log_likelihood(self, rho, slope: float):
        """``slope · ρ`` of a score cube in single precision, −inf where ρ is −inf."""
        xp = self.xp
        rho = xp.asarray(rho, dtype=xp.float32)
        outside = xp.isneginf(rho)
        out = xp.where(outside, xp.float32(0.0), rho)
        out *= xp.float32(slope)
        out[outside] = -xp.inf
        return out


BACKENDS = {"cpu": "lorefine_mpi.kernels.cpu", "numpy": "lorefine_mpi.kernels.reference"}  # compute.backend -> its module
_CURRENT: Backend | None = None


def use_backend(name: str) -> Backend:
    """Make the back-end called ``name`` (`BACKENDS`) the one `backend` returns, and return it."""
    global _CURRENT
    if _CURRENT is None or _CURRENT.name != name:
        _CURRENT = importlib.import_module(BACKENDS[name]).BACKEND
    return _CURRENT


def backend() -> Backend:
    """The back-end in use (``cpu`` until `use_backend` chooses another)."""
    return _CURRENT if _CURRENT is not None else use_backend("cpu")
