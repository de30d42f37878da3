"""The exact masked cross-correlation coefficient (paper Eq. 1) for many references and every shift at once.

For an experimental image f with a fixed 2D mask M (the J pixels of Eq. 1) and a reference g moved by
an integer shift s, ``g_s(y) = g(y + s)``:

    ρ(s) = Σ_M (f − f̄)(g_s − ḡ_s) / sqrt( Σ_M (f − f̄)² · Σ_M (g_s − ḡ_s)² )

The means and norms are over the mask *for each shift* (the exact form). With h = (f − f̄)·M the
numerator is ``Σ_y h(y) g(y + s)`` and, since Σ h = 0, needs no ḡ_s. All shifts of all references are
one matrix product: templates ``G (r, K)`` (references cropped to the mask's bounding box dilated by the
largest shift) times the image's shifted copies ``H (K, S)``. The reference-side sums
``Σ_M g_s`` and ``Σ_M g_s²`` depend only on the reference and the mask, so `prepare_references`
computes them once (float64) and every particle sharing the references reuses them.

Sign: if the image is the reference moved by +s (``f(y) = g(y + s)``, i.e. image = P(x + o + s) for
a reference P(x + o)), the best shift is +s.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lorefine_mpi.geometry import rotations


def shift_grid(max_shift_px: float, shift_step_px: float) -> np.ndarray:
    """Integer shifts (S, 2) float64 (x, y), ``n · step`` for ``|n| ≤ floor(max / step)``; y outer, x inner."""
    t = int(np.floor(max_shift_px / shift_step_px + 1e-9))
    axis = np.arange(-t, t + 1) * shift_step_px
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], -1).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class ReferenceTables:
    """Templates and per-shift tables of r references for one mask and one shift set.

    templates: (r, K) float32, the references over the region R (mask bounding box dilated by the
    largest shift), row-major. sum_g, sum_g2: (r, S) float64, ``Σ_M g_s`` and ``Σ_M g_s²``.
    mask_windows: (S, K) float64, the mask moved by each shift, over R. box, region (y0, y1, x0, x1),
    reach (largest shift, px), shift_offsets (S, 2) int (x, y), n_mask (J).
    """

    templates: np.ndarray
    sum_g: np.ndarray
    sum_g2: np.ndarray
    mask_windows: np.ndarray
    region: tuple
    reach: int
    shift_offsets: np.ndarray
    n_mask: int
    mask: np.ndarray


def _windows(image, region, reach, shift_offsets):
    """(…, S, K): for each shift s, ``image(z − s)`` over the region R (zero outside the image)."""
    y0, y1, x0, x1 = region
    ext = np.zeros(image.shape[:-2] + (y1 - y0 + 2 * reach, x1 - x0 + 2 * reach), dtype=image.dtype)
    ny, nx = image.shape[-2:]
    # ext covers [y0 − reach, y1 + reach) × [x0 − reach, x1 + reach) of the image plane.
    sy0, sy1 = max(y0 - reach, 0), min(y1 + reach, ny)
    sx0, sx1 = max(x0 - reach, 0), min(x1 + reach, nx)
    ext[..., sy0 - (y0 - reach) : sy1 - (y0 - reach), sx0 - (x0 - reach) : sx1 - (x0 - reach)] = image[..., sy0:sy1, sx0:sx1]
    views = sliding_window_view(ext, (y1 - y0, x1 - x0), axis=(-2, -1))
    # window (j_y, j_x) starts at R − reach + j, i.e. holds image(z − s) with s = reach − j.
    jy = reach - shift_offsets[:, 1]
    jx = reach - shift_offsets[:, 0]
    picked = views[..., jy, jx, :, :]
    return picked.reshape(picked.shape[:-2] + (-1,))


def prepare_references(references, mask, shifts_px) -> ReferenceTables:
    """Tables for references (r, N, N) float (real space, centred), mask (N, N) bool or 0/1, shifts (S, 2) px."""
    g = np.asarray(references, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    offsets = np.rint(np.asarray(shifts_px, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    reach = int(np.abs(offsets).max()) if len(offsets) else 0
    rows, cols = np.nonzero(m)
    box = m.shape[0]
    region = (max(rows.min() - reach, 0), min(rows.max() + 1 + reach, box), max(cols.min() - reach, 0), min(cols.max() + 1 + reach, box))
    y0, y1, x0, x1 = region
    templates = np.ascontiguousarray(g[:, y0:y1, x0:x1].reshape(len(g), -1))
    mask_windows = _windows(m.astype(np.float64), region, reach, offsets)  # (S, K)
    t64 = templates.astype(np.float64)
    sum_g = t64 @ mask_windows.T
    sum_g2 = (t64 * t64) @ mask_windows.T
    return ReferenceTables(templates, sum_g, sum_g2, mask_windows, region, reach, offsets, int(m.sum()), m)


def take(tables: ReferenceTables, ids) -> ReferenceTables:
    """The tables of the references ``ids`` only."""
    ids = np.asarray(ids)
    return dataclasses.replace(tables, templates=tables.templates[ids], sum_g=tables.sum_g[ids], sum_g2=tables.sum_g2[ids])


def correlate(tables: ReferenceTables, images) -> np.ndarray:
    """``Σ_y X(y) g(y + s)`` over the region for images X (p, N, N): (p, r, S) float64.

    X is used as given (multiply by the mask first to restrict the sum to the mask).
    """
    x = np.asarray(images, dtype=np.float32)
    windows = _windows(x, tables.region, tables.reach, tables.shift_offsets)  # (p, S, K)
    p, s, k = windows.shape
    out = np.ascontiguousarray(windows).reshape(p * s, k) @ tables.templates.T  # (p·S, r)
    return out.reshape(p, s, -1).transpose(0, 2, 1).astype(np.float64)


def _centred_in_mask(tables: ReferenceTables, images):
    """h = (f − f̄_M)·M (p, N, N) float64 and its squared norm (p,)."""
    f = np.asarray(images, dtype=np.float64)
    m = tables.mask
    h = (f - f[:, m].mean(axis=1)[:, None, None]) * m
    return h, (h * h).sum(axis=(1, 2))


def _ratio(numerator, f_norm2, g_var):
    denominator = np.sqrt(f_norm2[:, None, None] * np.maximum(g_var, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)
    return rho.astype(np.float32)


def masked_ccc(tables: ReferenceTables, images) -> np.ndarray:
    """The exact masked CCC (Eq. 1): images (p, N, N) float × references → (p, r, S) float32."""
    h, f_norm2 = _centred_in_mask(tables, images)
    return _ratio(correlate(tables, h), f_norm2, (tables.sum_g2 - tables.sum_g**2 / tables.n_mask)[None])


def composite_ccc(tables: ReferenceTables, images, rest) -> np.ndarray:
    """Eq. 1 against ``g_s + rest`` (the moved target plus the rest at its fixed pose), (p, r, S) float32.

    images, rest: (p, N, N) float. Expands the sums over the mask so all shifts stay one matrix product:
    numerator ``Σ_M h g_s + Σ_M h rest``; variance ``Σ g_s² + 2 Σ_M g_s rest + Σ_M rest² − (Σ g_s + Σ_M rest)² / J``.
    """
    h, f_norm2 = _centred_in_mask(tables, images)
    r = np.asarray(rest, dtype=np.float64)
    rm = r * tables.mask
    numerator = correlate(tables, h) + (h * r).sum(axis=(1, 2))[:, None, None]
    cross = correlate(tables, rm)
    sum_r = rm.sum(axis=(1, 2))[:, None, None]
    sum_r2 = (rm * r).sum(axis=(1, 2))[:, None, None]
    var = tables.sum_g2[None] + 2 * cross + sum_r2 - (tables.sum_g[None] + sum_r) ** 2 / tables.n_mask
    return _ratio(numerator, f_norm2, var)


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


def log_likelihood_slope(rho, n_pixels):
    """``d log_likelihood / dρ = J·ρ₊ / (1 − ρ₊²)``."""
    r = np.clip(np.asarray(rho, dtype=np.float64), 0.0, RHO_MAX)
    return n_pixels * r / (1.0 - r * r)


def prior_weight(rho, n_pixels, sigma, step) -> np.ndarray:
    """λ of a Gaussian prior of width ``sigma`` in the sub-grid fits, in units of ρ per step².

    Near a candidate of score ρ the log-posterior is ``log_likelihood(ρ(x)) − |x − μ|² / (2σ²)``
    ≈ ``slope · (ρ(x) − ½ λ |u − μ_u|²)`` with u = x / step and ``λ = step² / (σ² · slope)``: the fits of
    ρ (`subpixel_peak`, `quadratic_peak_rotation`) add that term. Capped at 1e12 (ρ ≤ 0: the prior decides).
    """
    slope = log_likelihood_slope(rho, n_pixels)
    return np.minimum(step * step / (sigma * sigma * np.maximum(slope, 1e-300)), 1e12)


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


def quadratic_peak_rotation(best, poses, scores, step_rad, reach_steps=1.6, min_points=10, prior_weight=0.0,
                            prior_centre=None) -> np.ndarray:
    """The best grid pose (3, 3) moved to the peak of a quadratic fitted to the scores around it.

    poses (k, 3, 3) and scores (k,) are the candidates searched (non-finite scores are ignored). Each is
    placed at ω = rotation_vector(pose · bestᵀ) / step, and the scores of those within ``reach_steps``
    are fitted by least squares with s(ω) = c + gᵀω + ½ ωᵀHω (10 coefficients). With a prior (weight λ,
    `prior_weight`, centred on the pose ``prior_centre`` at μ in the same coordinates) the function
    maximised is ``s(ω) − ½ λ |ω − μ|²``. When its Hessian ``H − λI`` is negative definite the pose moves
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
    hessian = np.array([[2 * c[4], c[7], c[8]], [c[7], 2 * c[5], c[9]], [c[8], c[9], 2 * c[6]]]) - prior_weight * np.eye(3)
    if np.linalg.eigvalsh(hessian).max() >= 0:
        return best
    gradient = c[1:4]
    if prior_centre is not None and prior_weight > 0:
        gradient = gradient + prior_weight * rotations.rotation_vector(np.asarray(prior_centre) @ np.asarray(best).T) / step_rad
    peak = -np.linalg.solve(hessian, gradient)
    length = np.linalg.norm(peak)
    if length > 0.5:
        peak *= 0.5 / length
    return rotations.from_rotation_vector(peak * step_rad) @ best
