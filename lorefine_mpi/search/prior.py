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


def log_evidence(scores: local.ParticleScores, psi_step_rad, likelihood: score.Likelihood, prior_pose, prior_offset_px,
                 sigma_rot_rad, sigma_px) -> np.ndarray:
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
    poses = local.candidate_pose(scores.frames[None], scores.ms[:, None], psi_step_rad)  # (T, K, 3, 3)
    theta2 = rotations.geodesic_angle(poses, prior_pose) ** 2  # (T, K)
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


def learn_widths(total_log_evidence, sigma_rot_rad, sigma_px) -> tuple[float, float]:
    """The (σ_rot rad, σ_px) of the grid that maximise the summed log evidence (len(rot), len(px))."""
    a, b = np.unravel_index(np.argmax(total_log_evidence), total_log_evidence.shape)
    return float(sigma_rot_rad[a]), float(sigma_px[b])
