"""The exact masked cross-correlation coefficient (paper Eq. 1) for many image patches and references at once.

The search compares a reference g (a projection of the module, on the working grid, its centre at the
box centre) with the experimental image turned by an in-plane angle and moved by a shift: the *patch*
``h(z) = f(R2(β) z − u)`` sampled at the J pixels z of a round 2D mask centred on the module
(`lorefine_mpi.kernels`, ``sample_patches``). The mask moves with the module (it is fixed in the
reference's frame), and Eq. 1 over it is

    ρ = Σ_M (h − h̄)(g − ḡ) / sqrt( Σ_M (h − h̄)² · Σ_M (g − ḡ)² )

with the means and norms over the mask. With every row centred and scaled to unit norm, ρ for all
patches (rows of H, one per (angle, shift)) against all references (rows of G) is one matrix product
``Ĥ Ĝᵀ``. The composite score (Eqs. 2–8) compares h with ``g + r``, r the rest of the complex sampled
like h; its sums expand into two matrix products (`composite_ccc`).
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.kernels import backend
from lorefine_mpi.search.registry import Registry


def shift_grid(max_shift_px: float, shift_step_px: float) -> np.ndarray:
    """Integer shifts (S, 2) float64 (x, y), ``n · step`` for ``|n| ≤ floor(max / step)``; y outer, x inner."""
    t = int(np.floor(max_shift_px / shift_step_px + 1e-9))
    axis = np.arange(-t, t + 1) * shift_step_px
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], -1).astype(np.float64)


def centre_rows(rows) -> tuple[np.ndarray, np.ndarray]:
    """Rows (Q, J) less their means, float32, and their squared norms (Q,) float64."""
    return backend().centre_rows(rows)


def inverse_norms(norm2) -> np.ndarray:
    """1 / sqrt(norm2) per row (Q,) float32, 0 where the squared norm is 0 (a constant row)."""
    return backend().inverse_norms(norm2)


def normalise_rows(rows) -> np.ndarray:
    """Rows (Q, J) centred and scaled to unit norm (a constant row becomes 0): float32."""
    return backend().normalise_rows(rows)


def masked_ccc(patches, templates) -> np.ndarray:
    """Eq. 1 of every patch (Q, J) against every template (K, J): (Q, K) float32. Both are given as
    `normalise_rows` made them."""
    return backend().correlate(patches, templates)


def patch_ccc(patches, templates, moments=None) -> np.ndarray:
    """Eq. 1 of raw patches (Q, J) against templates (K, J) as `normalise_rows` made them: (Q, K) float32,
    the same as ``masked_ccc(normalise_rows(patches), templates)`` without a normalised copy of the patches.
    The templates are centred over the mask, so a patch's mean drops out of the products; each row of the
    product is scaled by the patch's norm about its mean, ``Σp² − (Σp)²/J``. moments: (Σp, Σp²) per row
    (Q,) float64 when the sampling already summed them, or None."""
    return backend().patch_ccc(patches, templates, moments)


def patch_scale(patches, moments=None) -> np.ndarray:
    """1 / the norm about its mean, ``sqrt(Σp² − (Σp)²/J)``, of each raw patch (Q, J): (Q,) float32, 0 for a
    constant patch; `patch_ccc`'s factor per row. moments: as in `patch_ccc`."""
    return backend().patch_scale(patches, moments)


def composite_ccc(patches, rest, templates) -> np.ndarray:
    """Eq. 1 of each patch h (Q, J) against ``g + r`` for every template g (K, J) and the rest r (Q, J)
    sampled like h: (Q, K) float32. None of them normalised: numerator ``h̃·g̃ + h̃·r̃``, variance
    ``|g̃|² + 2 r̃·g̃ + |r̃|²`` (~ = less the mean over the mask)."""
    return backend().composite_ccc(patches, rest, templates)


RHO_MAX = 1.0 - 1e-7  # keeps log(1 − ρ²) finite for a perfect match


def log_likelihood(rho, n_pixels):
    """Log-likelihood of a candidate in nats, up to a constant shared by all candidates: ``−(J/2)·log(1 − ρ₊²)``.

    The image f over the J pixels of the mask is modelled as ``a·g + b`` plus white Gaussian noise of unknown
    variance; the maximum over a, b and the variance of the log-likelihood is ``−(J/2)·log(RSS) + const``
    with ``RSS = Σ_M (f − f̄)² · (1 − ρ²)``, ρ of Eq. 1. Ranking by it is ranking by ρ; its differences are
    in nats, so a log-prior can be added. A negative ρ (an inverted fit) counts as 0.
    """
    r = np.clip(np.asarray(rho, dtype=np.float64), 0.0, RHO_MAX)
    return -0.5 * n_pixels * np.log1p(-r * r)


def log_likelihood_of_cube(rho, n_pixels) -> np.ndarray:
    """`log_likelihood` of a whole score cube in single precision, −inf where ρ is −inf (not a candidate): for
    ranking its entries (an error of about 1e-7 of the value, 1e-5 nats at most here; six times faster than
    double precision on the (angle, direction, shift) cube of a particle)."""
    return backend().profile_log_likelihood(rho, n_pixels, RHO_MAX)


def log_likelihood_slope(rho, n_pixels):
    """``d log_likelihood / dρ = J·ρ₊ / (1 − ρ₊²)``."""
    r = np.clip(np.asarray(rho, dtype=np.float64), 0.0, RHO_MAX)
    return n_pixels * r / (1.0 - r * r)


def prior_weight(slope, sigma, step) -> np.ndarray:
    """λ of a Gaussian prior of width ``sigma`` in the sub-grid fits, in units of ρ per step².

    Near a candidate of score ρ the log-posterior is ``ℓ(ρ(x)) − |x − μ|² / (2σ²)``
    ≈ ``slope · (ρ(x) − ½ λ |u − μ_u|²)`` with u = x / step, ``slope = dℓ/dρ`` there (`Likelihood.slope`) and
    ``λ = step² / (σ² · slope)``: the fits of ρ (`subpixel_peak`, `quadratic_peak_rotation`) add that term.
    Capped at 1e12 (slope 0, e.g. ρ ≤ 0: the prior decides).
    """
    return np.minimum(step * step / (sigma * sigma * np.maximum(np.asarray(slope, dtype=np.float64), 1e-300)), 1e12)


class Likelihood:
    """The log-likelihood ℓ(ρ) of one particle's candidates, in nats up to a constant shared by them all
    (``search.likelihood``; `LIKELIHOODS`). n_pixels: J, the mask's degrees of freedom; rho_centre: ρ at the centre
    of the particle's prior (ρ_s; used by the kinds that need it, `needs_centre`)."""

    name = ""
    needs_centre = False

    def __init__(self, n_pixels: float, rho_centre: float = float("nan")):
        self.n_pixels, self.rho_centre = n_pixels, rho_centre

    def __call__(self, rho) -> np.ndarray:
        """ℓ of ρ (any shape), float64, −inf where ρ is −inf (not a candidate)."""
        return np.where(np.isneginf(rho), -np.inf, self._values(rho))

    def _values(self, rho) -> np.ndarray:
        raise TypeError(self.name)

    def of_cube(self, rho) -> np.ndarray:
        """ℓ of a whole score cube in single precision (for ranking its entries), −inf kept."""
        raise TypeError(self.name)

    def slope(self, rho) -> np.ndarray:
        """dℓ/dρ at ρ (`prior_weight`)."""
        raise TypeError(self.name)


class ProfileLikelihood(Likelihood):
    """``profile``: `log_likelihood`, the amplitude and noise level fitted to each candidate on its own."""

    name = "profile"

    def _values(self, rho):
        return np.asarray(log_likelihood(rho, self.n_pixels))

    def of_cube(self, rho):
        return log_likelihood_of_cube(rho, self.n_pixels)

    def slope(self, rho):
        return log_likelihood_slope(rho, self.n_pixels)


class FixedAmplitudeLikelihood(Likelihood):
    """``fixed_amplitude``: the image modelled as ``a·g + noise`` with one amplitude a and noise variance σ²
    for all the particle's candidates; with f and g centred over the J pixels and g of unit variance,
    ``−|f − a·g|² / 2σ²`` varies between candidates only through ``a·⟨f, g⟩ / σ² = ρ·a·|f|·√J / σ²``, and
    with ``|f|² = J·(a² + σ²)`` that is ``J·ρ_s / (1 − ρ_s²) · ρ``, ρ_s = a / √(a² + σ²) the correlation
    of the image with its true reference. ρ_s is estimated by ρ at the centre of the particle's prior (its
    consensus pose and origin; `rho_centre`), which noise does not bias upward as it biases the best
    candidate's ρ: the profile's slope at the best candidate, ``J·ρ/(1 − ρ²)``, exceeds the true one by
    that bias, and its posterior is too narrow (benchmarks/posterior_study.py)."""

    name = "fixed_amplitude"
    needs_centre = True

    @property
    def fixed_slope(self) -> float:
        """``J·ρ_s / (1 − ρ_s²)`` (ρ_s clipped to [0, RHO_MAX); 0 when not finite)."""
        r = min(max(float(self.rho_centre), 0.0), RHO_MAX) if np.isfinite(self.rho_centre) else 0.0
        return self.n_pixels * r / (1.0 - r * r)

    def _values(self, rho):
        rho = np.asarray(rho, dtype=np.float64)
        return self.fixed_slope * np.where(np.isneginf(rho), 0.0, rho)

    def of_cube(self, rho):
        return backend().linear_log_likelihood(rho, self.fixed_slope)

    def slope(self, rho):
        return np.full(np.shape(rho), self.fixed_slope)


LIKELIHOODS = Registry("search.likelihood", ProfileLikelihood, FixedAmplitudeLikelihood)


def subpixel_peak(scores, shifts_px, best=None, prior_weight=None, prior_centre_px=None) -> np.ndarray:
    """Sub-pixel shift (n, 2) of each row of scores (n, S) on the square grid ``shifts_px`` (S, 2):
    the best grid point refined by a parabola through it and its two neighbours in x and in y
    (kept on the grid point at the edge of the window or when the parabola is not a maximum).

    best: (n,) indices of the grid points to refine (default: the highest score of each row). With a
    prior, prior_weight (n,) λ and prior_centre_px (n, 2) μ: the peak is that of the parabola minus
    ``½ λ (x − μ)² / step²`` on each axis (`prior_weight`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, s = scores.shape
    side = int(round(np.sqrt(s)))
    grid = scores.reshape(n, side, side)
    step = shifts_px[1, 0] - shifts_px[0, 0] if s > 1 else 1.0
    best = np.argmax(scores, axis=1) if best is None else np.asarray(best)
    iy, ix = np.divmod(best, side)
    out = np.asarray(shifts_px, dtype=np.float64)[best].copy()
    weight = np.zeros(n) if prior_weight is None else np.broadcast_to(np.asarray(prior_weight, dtype=np.float64), (n,))
    offset = np.zeros((n, 2)) if prior_centre_px is None else (out - np.asarray(prior_centre_px)) / step  # u_b − μ_u
    rows = np.arange(n)
    for axis, (i, column) in enumerate(((ix, 0), (iy, 1))):
        inner = (i > 0) & (i < side - 1)
        lo = np.where(inner, i - 1, i)
        hi = np.where(inner, i + 1, i)
        if axis == 0:
            left, mid, right = grid[rows, iy, lo], grid[rows, iy, ix], grid[rows, iy, hi]
        else:
            left, mid, right = grid[rows, lo, ix], grid[rows, iy, ix], grid[rows, hi, ix]
        curvature = left - 2 * mid + right - weight
        ok = inner & (curvature < 0)
        gradient = 0.5 * (right - left) - weight * offset[:, column]
        delta = np.where(ok, -gradient / np.where(ok, curvature, 1.0), 0.0)
        out[:, column] += np.clip(delta, -0.5, 0.5) * step
    return out


QUADRATIC_REACH_STEPS = 1.6  # the neighbours `quadratic_peak_rotation` fits: within this many grid steps of the best pose


def quadratic_peak_rotation(best, poses, scores, step_rad, reach_steps=QUADRATIC_REACH_STEPS, min_points=10, prior_weight=0.0,
                            prior_centre=None) -> np.ndarray:
    """The best grid pose (3, 3) moved to the peak of a quadratic fitted to the scores around it.

    poses (k, 3, 3) and scores (k,) are the candidates searched (non-finite scores are ignored). Each is
    placed at ω = rotation_vector(pose · bestᵀ) / step, and the scores of those within ``reach_steps``
    are fitted by least squares with s(ω) = c + gᵀω + ½ ωᵀHω (10 coefficients). With a prior (weight λ,
    `prior_weight`, centred on the pose ``prior_centre`` at μ in the same coordinates) the function
    maximised is ``s(ω) − ½ λ |ω − μ|²`` (or ``s(ω) − ½ (ω − μ)ᵀ Λ (ω − μ)`` for a (3, 3) weight Λ: an anisotropic
    prior, with Λ in place of λI below). When its Hessian ``H − λI`` is negative definite the pose moves
    to its peak ``ω* = −(H − λI)⁻¹ (g + λμ)``, shortened to half a step if farther (the angular analogue of
    `subpixel_peak`); otherwise (fewer than ``min_points`` candidates, no maximum) ``best`` is returned.
    """
    omega = rotations.rotation_vector(np.asarray(poses) @ np.asarray(best).T) / step_rad
    near = (np.linalg.norm(omega, axis=1) <= reach_steps) & np.isfinite(scores)
    if near.sum() < min_points:
        return best
    x, y, z = omega[near].T
    design = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], 1)
    c = np.linalg.lstsq(design, np.asarray(scores, dtype=np.float64)[near], rcond=None)[0]
    weight = np.asarray(prior_weight, dtype=np.float64)
    weight = weight * np.eye(3) if weight.ndim == 0 else weight  # λ, or a (3, 3) matrix Λ (an anisotropic prior)
    hessian = np.array([[2 * c[4], c[7], c[8]], [c[7], 2 * c[5], c[9]], [c[8], c[9], 2 * c[6]]]) - weight
    if np.linalg.eigvalsh(hessian).max() >= 0:
        return best
    gradient = c[1:4]
    if prior_centre is not None and np.any(weight):
        gradient = gradient + weight @ (rotations.rotation_vector(np.asarray(prior_centre) @ np.asarray(best).T) / step_rad)
    peak = -np.linalg.solve(hessian, gradient)
    length = np.linalg.norm(peak)
    if length > 0.5:
        peak *= 0.5 / length
    return rotations.from_rotation_vector(peak * step_rad) @ best
