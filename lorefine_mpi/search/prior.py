"""The width of the prior on a module's motion, learned from the data (empirical Bayes; pure arrays).

The module moves relative to the consensus by a small rotation and shift. The search scores each
candidate (rotation ``R_c = A0ᵀ A_c`` away from the consensus pose A0, shift ``u_s`` away from the consensus
origin) by its log-likelihood ``ℓ_cs`` (`score.Likelihood`). A Gaussian prior of widths (σ_rot, σ_px)
on the candidate grid, normalised over the candidates searched, gives each particle the evidence

    log Z(σ_rot, σ_px) = log Σ_cs exp(ℓ_cs) π(c, s) ,   π ∝ exp(−θ_c² / 2σ_rot² − |u_s|² / 2σ_px²)

(θ_c the geodesic angle of R_c). Summed over a sample of particles, it is the marginal likelihood of the
widths; its maximum over a grid of widths (`learn_widths`) is what the data say about how much the module
moves: a width that is too wide lets noise choose the pose anywhere in the window, one that is too
narrow holds the module at the consensus. The sample's scores come from a search with a flat prior over
every candidate (rotation × shift), so nothing of the answer is assumed.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.search import local, score

RATIO = np.sqrt(2.0)
SIGMA_ROT_GRID_DEG = 0.125 * RATIO ** np.arange(13)  # 0.125° … 8°
SIGMA_PX_GRID = 0.0625 * RATIO ** np.arange(13)  # 0.0625 … 4 px


def candidate_rotation_vectors(scores: local.ParticleScores, psi_step_rad, prior_pose) -> np.ndarray:
    """Each candidate's rotation vector ω = rotvec(A0ᵀ A) away from the prior pose A0, in the complex frame: (T, K, 3) rad."""
    poses = local.candidate_pose(scores.frames[None], scores.ms[:, None], psi_step_rad)  # (T, K, 3, 3)
    return rotations.rotation_vector(np.swapaxes(prior_pose, -1, -2) @ poses)


def log_evidence(scores: local.ParticleScores, psi_step_rad, likelihood: score.Likelihood, prior_pose, prior_offset_px,
                 sigma_rot_rad, sigma_px, rotation_shape=None) -> np.ndarray:
    """log Z (len(sigma_rot_rad), len(sigma_px)) of one particle's scores (a flat-prior search over every
    rotation and shift: ``scores.rho`` (T, K, S)) under ``likelihood`` (the search's, `ParticleScores.likelihood`),
    the prior centred on ``prior_pose`` (3, 3) and the shift ``prior_offset_px`` (2,) (consensus origin less the
    preliminary one, image frame).

    Rotation and shift are learned together over the search's own grid. (Learning the rotation's width from
    the angles re-scored at each particle's sub-pixel shift instead, `ParticleScores.at_shift`, recovered a
    synthetic motion more closely but learned wider widths on the flex_dev set, whose small module's angles
    and maps then came out worse: measured with benchmarks/accuracy.py.)"""
    valid = scores.valid[:, :, None] & np.isfinite(scores.rho)
    ll = np.where(valid, likelihood(np.where(valid, scores.rho, 0.0)), -np.inf)
    if rotation_shape is None:
        poses = local.candidate_pose(scores.frames[None], scores.ms[:, None], psi_step_rad)  # (T, K, 3, 3)
        theta2 = rotations.geodesic_angle(poses, prior_pose) ** 2  # (T, K)
    else:  # an anisotropic prior N(0, σ² S) on ω: the Mahalanobis form ωᵀ S⁻¹ ω in place of θ²
        omega = candidate_rotation_vectors(scores, psi_step_rad, prior_pose)
        theta2 = np.einsum("tki,ij,tkj->tk", omega, np.linalg.inv(rotation_shape), omega)
    u2 = ((scores.shifts_px - prior_offset_px) ** 2).sum(-1)  # (S,)
    rot = np.where(scores.valid[None], -theta2[None] / (2.0 * np.asarray(sigma_rot_rad)[:, None, None] ** 2), -np.inf)  # (A, T, K)
    shift = -u2[None] / (2.0 * np.asarray(sigma_px)[:, None] ** 2)  # (B, S)
    per_shift = _sum_over_rotations(ll.reshape(-1, ll.shape[-1]), rot.reshape(len(rot), -1))  # (A, S)
    joint = _logsumexp(per_shift[:, None, :] + shift[None], axis=2)  # (A, B)
    return joint - _logsumexp(rot, axis=(1, 2))[:, None] - _logsumexp(shift, axis=1)[None, :]


def _sum_over_rotations(ll, rot) -> np.ndarray:
    """log Σ_c exp(ll[c, s] + rot[a, c]) (A, S) of ll (C, S) and rot (A, C), −inf allowed in both: one matrix
    product of the exponentials, each scaled by its largest term (so every factor is ≤ 1), and the exact
    log-domain sum for the few entries whose product falls below `UNDERFLOW` (where the best rotation of a
    narrow prior sits far from the likelihood's peak)."""
    peak_ll, peak_rot = _finite_peak(ll, axis=0), _finite_peak(rot, axis=1)
    product = np.exp(rot - peak_rot[:, None]) @ np.exp(ll - peak_ll[None, :])
    with np.errstate(divide="ignore"):
        out = np.log(product) + peak_rot[:, None] + peak_ll[None, :]
    a, s = np.nonzero(product < UNDERFLOW)
    if len(a):
        out[a, s] = _logsumexp(ll[:, s].T + rot[a], axis=1)
    return out


UNDERFLOW = 1e-200  # below this a product of exponentials may have lost its terms: summed in the log domain instead


def _logsumexp(a: np.ndarray, axis) -> np.ndarray:
    """log Σ exp(a) over ``axis`` (−inf where every term is −inf)."""
    peak = _finite_peak(a, axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - peak).sum(axis=axis)) + np.squeeze(peak, axis=axis)


def _finite_peak(a: np.ndarray, axis, keepdims: bool = False) -> np.ndarray:
    """The largest value over ``axis``, 0 where it is not finite (every term −inf): the shift of a stable sum of exponentials."""
    peak = np.max(a, axis=axis, keepdims=keepdims)
    return np.where(np.isfinite(peak), peak, 0.0)


def rotation_moment(scores: local.ParticleScores, psi_step_rad, likelihood: score.Likelihood, prior_pose, prior_offset_px,
                    sigma_rot_rad: float, sigma_px: float) -> np.ndarray:
    """E[ω ωᵀ] (3, 3) rad² over the particle's posterior (its flat-prior scores with the isotropic prior of widths
    σ_rot, σ_px), ω the candidates' rotation vectors away from the prior pose (`candidate_rotation_vectors`)."""
    valid = scores.valid[:, :, None] & np.isfinite(scores.rho)
    ll = np.where(valid, likelihood(np.where(valid, scores.rho, 0.0)), -np.inf)
    omega = candidate_rotation_vectors(scores, psi_step_rad, prior_pose)
    log_weight = (ll - ((omega**2).sum(-1) / (2.0 * sigma_rot_rad**2))[:, :, None]
                  - (((scores.shifts_px - prior_offset_px) ** 2).sum(-1) / (2.0 * sigma_px**2))[None, None, :])
    log_weight = _logsumexp(log_weight, axis=2)  # (T, K): the shifts summed out
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    return np.einsum("tk,tki,tkj->ij", weight, omega, omega)


def rotation_shape(moments) -> np.ndarray | None:
    """The shape S (3, 3), determinant 1, of the mean second moment of the sample's rotations (n, 3, 3); None when it
    is not positive definite."""
    mean = np.asarray(moments, dtype=np.float64).mean(axis=0)
    mean = 0.5 * (mean + mean.T)
    eigenvalues = np.linalg.eigvalsh(mean)
    if eigenvalues.min() <= 0:
        return None
    return mean / np.prod(eigenvalues) ** (1.0 / 3.0)


SHAPE_EVIDENCE_NATS = 5.5  # an anisotropic prior (5 more numbers) is kept when the sample's evidence gains this much (χ²₅ 95 % / 2)
SHAPE_MIN_RATIO = 4.0  # ... and when its widest variance is at least this many times its narrowest (σ twice): a sample of a few
# hundred isotropic motions has a second moment up to about twice as wide one way as another, which changes no search


def shaped_width(isotropic_total, shaped_total, sigma_rot_rad, shape):
    """(σ_rot, shape or None, evidence gained): the anisotropic prior of ``shape`` at its best width (continuous,
    `learn_widths`) when the sample's summed log evidence with it (``shaped_total``, over the widths ``sigma_rot_rad``)
    beats the isotropic prior's best (``isotropic_total``, any shape) by more than `SHAPE_EVIDENCE_NATS` and the shape
    is anisotropic enough to matter (`SHAPE_MIN_RATIO`); else (None, None, gain)."""
    gain = float(np.max(shaped_total)) - float(np.max(isotropic_total))
    values = np.linalg.eigvalsh(shape)
    if gain <= SHAPE_EVIDENCE_NATS or values[-1] < SHAPE_MIN_RATIO * values[0]:
        return None, None, gain
    return learn_widths(np.asarray(shaped_total)[:, None], sigma_rot_rad, np.ones(1))[0], shape, gain


def learn_widths(total_log_evidence, sigma_rot_rad, sigma_px) -> tuple[float, float]:
    """The (σ_rot rad, σ_px) that maximise the summed log evidence (len(rot), len(px)) over the grid of widths: the
    best grid point moved, along each axis, to the peak of the parabola through it and its two neighbours in log σ
    (at most half a grid step; kept on the grid point at the grid's edge or without a maximum), so the widths are
    continuous, not the grid's."""
    total = np.asarray(total_log_evidence, dtype=np.float64)
    a, b = np.unravel_index(np.argmax(total), total.shape)
    return _log_parabola_peak(total[:, b], sigma_rot_rad, a), _log_parabola_peak(total[a, :], sigma_px, b)


def _log_parabola_peak(values, grid, i) -> float:
    """The peak in log σ of the parabola through values[i−1 : i+2] at log grid[i−1 : i+2] (grid[i] at an edge or
    without a maximum), within half a step of grid[i]."""
    grid = np.asarray(grid, dtype=np.float64)
    if not 0 < i < len(grid) - 1 or not np.all(np.isfinite(values[i - 1 : i + 2])):
        return float(grid[i])
    left, mid, right = values[i - 1 : i + 2]
    curvature = left - 2 * mid + right
    if curvature >= 0:
        return float(grid[i])
    delta = float(np.clip(-0.5 * (right - left) / curvature, -0.5, 0.5))  # in grid steps
    logs = np.log(grid)
    step = logs[i + 1] - logs[i] if delta > 0 else logs[i] - logs[i - 1]
    return float(np.exp(logs[i] + delta * step))
