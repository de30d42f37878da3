"""The local search of one rigid module for the particles of one work unit (pure arrays, no I/O, no MPI).

Frame
    The target module is recentred: its centre of mass sits at the box centre (`modules.py`), and every
    particle's preliminary pose (A0, o0) is expressed in that frame. The experimental image is moved by
    its preliminary origin (a sub-pixel phase ramp), so the module's centre projects onto the image
    centre, where the round 2D mask of the CCC sits.

Candidates (paper Eqs. 10–16, SPEC §3.3)
    Directions: the evenly distributed set D (`candidates.direction_grid`) within the cone α0 of the
    particle's projection direction e_r0. ψ centre: the preliminary pose carried along the great arc
    e_r0 → e_ri without in-plane turning, ``A_i = A0 · Gᵀ`` (parallel transport, Eqs. 12–14).
    ψ grid: every direction d of D has one fixed *canonical frame* B_d (a pose whose third row is d,
    defined once for the whole sphere, `canonical_frames`), and the in-plane angles searched are the
    lattice ``Rz(m·d1) · B_d`` with the ``2·t1 + 1`` integers m nearest to the transported centre
    ``A_i · B_dᵀ = Rz(β_i)`` (Eq. 15 with the lattice phase fixed per direction instead of per particle:
    same step, same range, within ±d1/2). Shifts: integer px steps of d2 within ±t2 (Eq. 16).

Why the canonical frames: a candidate ``Rz(β) · B_d`` projects to ``P_{B_d}`` turned in plane by β, so the
    projections ``P_{B_d}`` of a work unit (one projection class) are computed once and shared by all of
    its particles; each particle turns its *own image* by −β instead (a handful of angles, cheap). With a
    round mask centred on the module the CCC is unchanged by the turn, and an integer shift s found in the
    turned frame is the image-frame shift ``R2(β) s``.

Score (paper Eq. 1): the exact masked CCC over the pixels of the 2D mask for every shift
    (`score.py`). Mode ``subtract`` (Discussion, Eqs. 17–25) first removes the rest of the complex,
    ``f1A = f1 − k · CTF ⊛ P_A0[V_rest]``, where (a, k, b) are fitted per particle by linear least squares
    of the image against the two preliminary projections (target and rest) plus a constant over the
    whole box (fitting the target too keeps k unbiased where the two overlap). Mode ``composite``
    (Eqs. 2–8) compares the image with ``CTF ⊛ (P_cand[V_m] + P_A0[V_rest])``.

Strategies: ``simultaneous`` (Fig. 3A): all (direction, ψ, shift). ``separate`` (Fig. 3B): n random
    (direction, ψ) of the particle's set, each over all shifts; their best shifts (sub-pixel, parabolic)
    are averaged in the image frame; then all (direction, ψ) at that shift.

Angles between grid points (``search.angle_refinement: quadratic``, the default): the best grid pose is
    moved to the peak of a quadratic fitted to the scores of its grid neighbours at the chosen shift
    (`score.quadratic_peak_rotation`, at most half a step), as the shift's parabola does for pixels.
    ``none`` keeps the best grid pose (the paper).

Prior (``search.prior_sigma_deg`` / ``prior_sigma_px``, not in the paper; RELION multi-body has the same
    Gaussian priors on a body's rotation and translation): candidates are chosen by the log-posterior
    ``score.log_likelihood(ρ, J) − ½ (θ / σ_rot)² − ½ (|o − o_prior| / σ_px)²`` instead of ρ, θ the geodesic
    angle from the prior pose. Its centre is the consensus pose (the module moves relative to the
    consensus), so later iterations do not wander. Where the data decide (noise-free: ρ near 1, the
    likelihood's curvature is huge), it changes nothing; at low SNR it keeps the noise from choosing an
    orientation anywhere in the cone. The sub-grid fits (parabola, quadratic) use ρ plus the prior's
    pull linearised at the chosen candidate (`score.prior_weight`).

CTF: references are ``CTF ⊛ P_{B_d}``. Since the image is turned by −β, the CTF used for a particle's
    references is its own with the astigmatism angle turned by +β̄ (the turned image sees its
    U axis at α + β̄) (β̄ = the particle's central in-plane angle); for astigmatism the
    few-degree spread of β around β̄ is neglected (exact for round CTFs).

Determinism: every particle's result depends only on its own image, pose, CTF and seed, never on
    which other particles share its unit, so results do not depend on the number of ranks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from lorefine_mpi.geometry import candidates, rotations
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import score

_SEAM_TILT_RAD = np.deg2rad(135.0)


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The search in internal units (built from the config's `search` and `score` sections)."""

    strategy: str  # "separate" or "simultaneous"
    mode: str  # "subtract" or "composite"
    cone_half_angle_rad: float
    angular_step_rad: float
    psi_step_rad: float
    psi_half_steps: int  # t1
    max_shift_steps: int  # t2
    shift_step_px: int  # d2 (integer pixels)
    n_random_angles: int
    mask: np.ndarray  # (N, N) bool, the J pixels of Eq. 1, centred at N//2
    angle_refinement: str = "quadratic"  # or "none": keep the best grid pose
    prior_sigma_rad: float | None = None  # Gaussian prior on the rotation from the prior pose (None: flat, the paper)
    prior_sigma_px: float | None = None  # Gaussian prior on the origin from the prior origin (None: flat)

    @property
    def has_prior(self) -> bool:
        return self.prior_sigma_rad is not None or self.prior_sigma_px is not None


def canonical_frames(directions) -> np.ndarray:
    """One pose per direction of D whose third row is that direction: ``(m, 3) → (m, 3, 3)``.

    ``euler(φ, θ, −φ)`` is smooth around the north pole and ``euler(φ, θ, +φ)`` around the south pole;
    the seam at θ = 135° only means a particle whose cone straddles it turns its image by a few more angles.
    """
    d = np.asarray(directions, dtype=np.float64)
    tilt = np.arccos(np.clip(d[:, 2], -1.0, 1.0))
    rot = np.arctan2(d[:, 1], d[:, 0])
    psi = np.where(tilt <= _SEAM_TILT_RAD, -rot, rot)
    return rotations.euler_to_matrix(rot, tilt, psi)


@dataclasses.dataclass
class ParticleCandidates:
    """One particle's candidate set on the shared lattice.

    direction_ids: (k,) int, indices into the unit's reference directions.
    m: (k, 2·t1+1) int, the in-plane lattice indices searched for each direction.
    beta_centre_rad: float, the central in-plane angle (used to turn the CTF).
    """

    direction_ids: np.ndarray
    m: np.ndarray
    beta_centre_rad: float


def particle_candidates(a0, unit_directions, unit_frames, settings: SearchSettings) -> ParticleCandidates:
    """Candidates of one particle with preliminary pose ``a0`` (3, 3) among the unit's directions.

    unit_directions: (r, 3) unit vectors (a subset of D); unit_frames: (r, 3, 3) their canonical frames.
    """
    inside = candidates.cone_directions(unit_directions, a0[2], settings.cone_half_angle_rad)
    transported = candidates.transported_poses(a0, unit_directions[inside])
    inplane = transported @ np.swapaxes(unit_frames[inside], -1, -2)
    beta = np.arctan2(inplane[:, 0, 1], inplane[:, 0, 0])
    centre = np.rint(beta / settings.psi_step_rad).astype(np.int64)
    offsets = np.arange(-settings.psi_half_steps, settings.psi_half_steps + 1)
    beta_centre = float(np.angle(np.exp(1j * beta).mean())) if len(beta) else 0.0
    return ParticleCandidates(inside, centre[:, None] + offsets[None, :], beta_centre)


def candidate_pose(frames, m, psi_step_rad) -> np.ndarray:
    """``Rz(m·d1) · B_d`` for frames ``(..., 3, 3)`` and lattice indices m ``(...)``."""
    return rotations.inplane_rotation(np.asarray(m) * psi_step_rad) @ frames


def turn_images(images_ft, angles_rad, box) -> np.ndarray:
    """Images turned by −β: ``out[j](z) = f(R2(β_j) z)`` for one image and several angles.

    images_ft: (N, N//2+1) complex, lorefine's rfft2 layout. angles_rad: (t,). Returns (t, N, N) float32.
    The image is first upsampled ×2 by zero-padding its spectrum, then sampled bilinearly, so the turn
    adds little interpolation blur.
    """
    n = box
    up = np.zeros((2 * n, n + 1), dtype=np.complex128)
    half = n // 2
    up[:half, : half + 1] = images_ft[:half, : half + 1]
    up[-half + 1 :, : half + 1] = images_ft[-half + 1 :, : half + 1]
    up[:, half] = 0.0  # drop the Nyquist column, ambiguous once padded
    fine = np.fft.fftshift(np.fft.irfft2(up, s=(2 * n, 2 * n))) * 4.0
    z = np.arange(n) - n // 2
    zx, zy = np.meshgrid(z, z)  # [y, x] arrays of x and y coordinates
    c, s = np.cos(angles_rad)[:, None, None], np.sin(angles_rad)[:, None, None]
    # R2(β) = [[c, s], [−s, c]] acting on (x, y).
    sample_x = c * zx + s * zy
    sample_y = -s * zx + c * zy
    coords = np.stack([2 * sample_y + n, 2 * sample_x + n])
    return ndimage.map_coordinates(fine, coords, order=1, mode="constant", cval=0.0).astype(np.float32)


def image_frame_shift(shift_px, beta_rad) -> np.ndarray:
    """A shift found in the turned frame, ``R2(β) s``, in the image frame. shift_px: (..., 2)."""
    c, s = np.cos(beta_rad), np.sin(beta_rad)
    x, y = shift_px[..., 0], shift_px[..., 1]
    return np.stack([c * x + s * y, -s * x + c * y], -1)


@dataclasses.dataclass
class UnitInput:
    """What one work unit needs, all arrays row-aligned with the unit's p particles.

    images_ft: (p, N, N//2+1) complex64, the experimental images, lorefine's rfft2 layout (raw frame).
    matrices: (p, 3, 3) preliminary poses of the target module. origin_px: (p, 2) preliminary origins
        in the recentred frame (the module's centre at the box centre).
    ctf: callable ``ctf(rows, extra_angle_rad) -> (k, N, N//2+1) float32`` giving the CTF of the unit's
        particles ``rows`` with the astigmatism angle turned by ``extra_angle_rad`` (k,), or None (no CTF).
    rest_ft: (p, N, N//2+1) complex64, ``CTF ⊛ P[V_rest]`` at the rest's preliminary poses, raw frame, or None.
    seeds: (p,) int, one seed per particle (the separate strategy's random angles).
    prior_matrices, prior_origin_px: (p, 3, 3) and (p, 2) the centres of the prior (the consensus poses,
        recentred frame), or None for the preliminary poses.
    """

    images_ft: np.ndarray
    matrices: np.ndarray
    origin_px: np.ndarray
    ctf: object
    rest_ft: np.ndarray | None
    seeds: np.ndarray
    prior_matrices: np.ndarray | None = None
    prior_origin_px: np.ndarray | None = None


@dataclasses.dataclass
class UnitResult:
    """matrix (p, 3, 3), origin_px (p, 2) recentred frame, score (p,) float32, rest_scale (p,) float32 (k)."""

    matrix: np.ndarray
    origin_px: np.ndarray
    score: np.ndarray
    rest_scale: np.ndarray


def unit_directions(directions, matrices, cone_half_angle_rad) -> np.ndarray:
    """Indices into D of every direction inside the cone of at least one particle of the unit."""
    cos_cone = np.cos(cone_half_angle_rad) - 1e-12
    inside = (np.asarray(matrices)[:, 2, :] @ np.asarray(directions).T) >= cos_cone
    return np.nonzero(inside.any(axis=0))[0]


def fit_rest_scale(image_ft, target_ft, rest_ft) -> tuple[float, float]:
    """Least-squares ``image ≈ a·target + k·rest + b`` over the whole box; returns (a, k).

    All three are (N, N//2+1) spectra of real images; the constant b is the DC term, so the fit uses the
    other Fourier coefficients (Parseval: the same least squares as in real space after removing means).
    """
    weights = np.broadcast_to(fourier.half_axis_multiplicity(image_ft.shape[0]), image_ft.shape).copy()
    weights[0, 0] = 0.0
    basis = [target_ft, rest_ft]
    gram = np.array([[np.sum(weights * (u.conj() * v).real) for v in basis] for u in basis])
    rhs = np.array([np.sum(weights * (u.conj() * image_ft).real) for u in basis])
    if np.linalg.cond(gram) > 1e8:
        return 1.0, 0.0
    a, k = np.linalg.solve(gram, rhs)
    return float(a), float(k)


class UnitSearch:
    """The search of one unit: the unit's reference projections, computed once, then each particle.

    module_fvol: the recentred target module's padded Fourier volume (`fourier.FourierVolume`).
    directions: (m, 3) the full direction set D. box: N.
    """

    def __init__(self, module_fvol, directions, settings: SearchSettings, box: int):
        self.fvol = module_fvol
        self.directions = np.asarray(directions, dtype=np.float64)
        self.settings = settings
        self.box = box
        t2, d2 = settings.max_shift_steps, settings.shift_step_px
        self.shifts_px = score.shift_grid(t2 * d2, d2)
        self.zero_shift = np.zeros((1, 2))

    def run(self, unit: UnitInput) -> UnitResult:
        s = self.settings
        ids = unit_directions(self.directions, unit.matrices, s.cone_half_angle_rad)
        dirs = self.directions[ids]
        frames = canonical_frames(dirs)
        refs_ft = fourier.project(self.fvol, frames)  # shared by every particle of the unit
        shared_tables = None
        if unit.ctf is None:
            refs_real = fourier.to_real(refs_ft, self.box)
            shared_tables = (
                score.prepare_references(refs_real, s.mask, self.shifts_px),
                score.prepare_references(refs_real, s.mask, self.zero_shift),
            )
        p = len(unit.matrices)
        out = UnitResult(np.empty((p, 3, 3)), np.empty((p, 2)), np.empty(p, np.float32), np.zeros(p, np.float32))
        for i in range(p):
            cands = particle_candidates(unit.matrices[i], dirs, frames, s)
            tables = shared_tables
            if tables is None:
                ctf = unit.ctf(np.array([i]), np.array([cands.beta_centre_rad]))
                refs_real = fourier.to_real(refs_ft * ctf, self.box)
                tables = (
                    score.prepare_references(refs_real, s.mask, self.shifts_px),
                    score.prepare_references(refs_real, s.mask, self.zero_shift),
                )
            image_ft = unit.images_ft[i]
            if unit.rest_ft is not None and s.mode == "subtract":
                ctf_i = 1.0 if unit.ctf is None else unit.ctf(np.array([i]), np.zeros(1))[0]
                target_ft = fourier.project(self.fvol, unit.matrices[i : i + 1], unit.origin_px[i : i + 1])[0] * ctf_i
                _, k = fit_rest_scale(image_ft, target_ft, unit.rest_ft[i])
                image_ft = image_ft - k * unit.rest_ft[i]
                out.rest_scale[i] = k
            centred_ft = fourier.shift_images_ft(image_ft[None], -unit.origin_px[i : i + 1])[0]
            rest_centred = None
            if unit.rest_ft is not None and s.mode == "composite":
                rest_centred = fourier.shift_images_ft(unit.rest_ft[i : i + 1], -unit.origin_px[i : i + 1])[0]
            prior = None
            if s.has_prior:
                centre = unit.matrices[i] if unit.prior_matrices is None else unit.prior_matrices[i]
                offset = np.zeros(2) if unit.prior_origin_px is None else unit.prior_origin_px[i] - unit.origin_px[i]
                prior = ParticlePrior(centre, offset)
            pose, shift_px, best = self._search_particle(centred_ft, cands, frames, tables, unit.seeds[i], rest_centred, prior)
            out.matrix[i], out.origin_px[i], out.score[i] = pose, unit.origin_px[i] + shift_px, best
        return out

    def _search_particle(self, centred_ft, cands: ParticleCandidates, frames, tables, seed, rest_ft=None, prior=None):
        """Best (pose, image-frame shift px, CCC) of one particle; see the module docstring.

        rest_ft: (N, N//2+1) the rest's projection in the same (centred) frame for the composite score, or None.
        prior: the particle's `ParticlePrior` (with ``settings.prior_sigma_*``), or None.
        """
        s = self.settings
        shift_tables, zero_tables = tables
        ms = np.unique(cands.m)
        angles = ms * s.psi_step_rad
        # valid[t, k]: in-plane lattice index ms[t] belongs to direction k's ψ range
        valid = (cands.m[None, :, :] == ms[:, None, None]).any(axis=2)
        turned = turn_images(centred_ft, angles, self.box)
        rest = None if rest_ft is None else turn_images(rest_ft, angles, self.box)
        dir_ids = cands.direction_ids
        posterior = Posterior(s, shift_tables.n_mask, prior, frames[dir_ids], ms, angles, self.shifts_px)

        def ccc(table, images, rest_images):
            return score.masked_ccc(table, images) if rest_images is None else score.composite_ccc(table, images, rest_images)

        if s.strategy == "simultaneous":
            cube = ccc(score.take(shift_tables, dir_ids), turned, rest)
            cube = np.where(valid[:, :, None], cube, -np.inf)
            t, k, j = np.unravel_index(np.argmax(posterior.of_cube(cube)), cube.shape)
            shift_px = image_frame_shift(self.shifts_px[j], angles[t])
            return self._refined_pose(cube[:, :, j], t, k, frames, dir_ids, ms, posterior), shift_px, cube[t, k, j]
        pairs = np.argwhere(valid)
        rng = np.random.default_rng(seed)
        picked = pairs[rng.choice(len(pairs), size=min(s.n_random_angles, len(pairs)), replace=False)]
        ut, it = np.unique(picked[:, 0], return_inverse=True)
        uk, ik = np.unique(picked[:, 1], return_inverse=True)
        sub = ccc(score.take(shift_tables, dir_ids[uk]), turned[ut], None if rest is None else rest[ut])[it, ik]
        best_shift = posterior.subpixel_shifts(sub, picked[:, 0])
        shift_px = image_frame_shift(best_shift, angles[picked[:, 0]]).mean(axis=0)
        # The image (and the rest, fixed to it) moved by the averaged shift; the mask follows the module.
        moved_ft = fourier.shift_images_ft(centred_ft[None], -shift_px[None])[0]
        moved_rest = None if rest_ft is None else turn_images(fourier.shift_images_ft(rest_ft[None], -shift_px[None])[0], angles, self.box)
        cube = ccc(score.take(zero_tables, dir_ids), turn_images(moved_ft, angles, self.box), moved_rest)[..., 0]
        cube = np.where(valid, cube, -np.inf)
        t, k = np.unravel_index(np.argmax(posterior.of_angles(cube)), cube.shape)
        return self._refined_pose(cube, t, k, frames, dir_ids, ms, posterior), shift_px, cube[t, k]

    def _refined_pose(self, scores, t, k, frames, dir_ids, ms, posterior) -> np.ndarray:
        """The best grid pose (in-plane index ms[t], direction dir_ids[k]) or, with ``angle_refinement:
        quadratic``, that pose moved to the peak of the scores (t, k) of its grid neighbours (at one shift),
        with the prior's pull when there is one."""
        s = self.settings
        best = candidate_pose(frames[dir_ids[k]], ms[t], s.psi_step_rad)
        if s.angle_refinement == "none":
            return best
        tt, kk = np.nonzero(np.isfinite(scores))
        poses = candidate_pose(frames[dir_ids[kk]], ms[tt], s.psi_step_rad)
        step = max(s.angular_step_rad, s.psi_step_rad)
        weight, centre = posterior.rotation_pull(scores[t, k], step)
        return score.quadratic_peak_rotation(best, poses, scores[tt, kk], step, prior_weight=weight, prior_centre=centre)


@dataclasses.dataclass(frozen=True)
class ParticlePrior:
    """The centre of one particle's prior: pose (3, 3), and its origin minus the preliminary one, offset_px (2,)
    (image frame), so that the prior's centre is at the search shift ``offset_px``."""

    pose: np.ndarray
    offset_px: np.ndarray


class Posterior:
    """The scores by which one particle's candidates are chosen (``search.prior_sigma_*``).

    Without a prior, the CCC itself (the paper). With one, the log-posterior in nats:
    ``score.log_likelihood(ρ, J) − ½ (θ / σ_rot)² − ½ (|o − o_prior| / σ_px)²``, θ the geodesic angle of
    the candidate's pose from the prior pose and o its origin. Sub-grid refinements fit ρ and add the
    prior's pull, linearised at the chosen candidate (`score.prior_weight`).

    frames: (K, 3, 3) the canonical frames of the particle's directions; ms (T,), angles_rad (T,): its
    in-plane lattice indices and angles; shifts_px (S, 2) the shift grid.
    """

    def __init__(self, settings: SearchSettings, n_pixels, prior: ParticlePrior | None, frames, ms, angles_rad, shifts_px):
        self.settings, self.n_pixels, self.prior = settings, n_pixels, prior
        self.angles_rad, self.shifts_px = angles_rad, shifts_px
        self.angle_cost = None
        if prior is not None and settings.prior_sigma_rad is not None:
            poses = candidate_pose(frames[None], ms[:, None], settings.psi_step_rad)  # (T, K, 3, 3)
            self.angle_cost = 0.5 * (rotations.geodesic_angle(poses, prior.pose) / settings.prior_sigma_rad) ** 2

    @property
    def active(self) -> bool:
        return self.prior is not None

    def _turned_centres(self, angles_rad):
        """(len(angles), 2): the prior's centre (offset_px, image frame) seen in frames turned by each β."""
        return image_frame_shift(np.broadcast_to(self.prior.offset_px, (len(angles_rad), 2)), -np.asarray(angles_rad))

    def _shift_cost(self, shifts_px, angles_rad):
        """(len(angles), S): ½ |R2(β) s − offset|² / σ² of the grid shifts s seen in frames turned by β, or 0."""
        if self.settings.prior_sigma_px is None:
            return np.zeros((len(angles_rad), len(shifts_px)))
        centre = self._turned_centres(angles_rad)
        return 0.5 * (((shifts_px[None] - centre[:, None]) ** 2).sum(-1)) / self.settings.prior_sigma_px**2

    def _log_likelihood_minus_angle_cost(self, rho):
        """rho (T, K, ...) → log-likelihood less the rotation prior's cost of each (T, K)."""
        out = score.log_likelihood(rho, self.n_pixels)
        if self.angle_cost is None:
            return out
        return out - self.angle_cost.reshape(self.angle_cost.shape + (1,) * (out.ndim - 2))

    def of_cube(self, cube):
        """cube (T, K, S) of ρ → the scores to maximise."""
        if not self.active:
            return cube
        return self._log_likelihood_minus_angle_cost(cube) - self._shift_cost(self.shifts_px, self.angles_rad)[:, None, :]

    def of_angles(self, cube):
        """cube (T, K) of ρ at one shift → the scores to maximise (the shift's prior is the same for all)."""
        return self._log_likelihood_minus_angle_cost(cube) if self.active else cube

    def subpixel_shifts(self, rho, t):
        """The sub-pixel best shift (n, 2) of rows rho (n, S), each in the frame turned by angles_rad[t] (n,)
        (the rotation prior is the same along a row, so only the shift's prior counts here)."""
        if not self.active or self.settings.prior_sigma_px is None:
            return score.subpixel_peak(rho, self.shifts_px)
        best = np.argmax(score.log_likelihood(rho, self.n_pixels) - self._shift_cost(self.shifts_px, self.angles_rad[t]), axis=1)
        rows = np.arange(len(rho))
        step = self.settings.shift_step_px
        weight = score.prior_weight(rho[rows, best], self.n_pixels, self.settings.prior_sigma_px, step)
        return score.subpixel_peak(rho, self.shifts_px, best=best, prior_weight=weight, prior_centre_px=self._turned_centres(self.angles_rad[t]))

    def rotation_pull(self, rho_best, step_rad):
        """(λ, prior pose) for `score.quadratic_peak_rotation`, or (0, None) without a rotation prior."""
        if self.angle_cost is None:
            return 0.0, None
        return float(score.prior_weight(rho_best, self.n_pixels, self.settings.prior_sigma_rad, step_rad)), self.prior.pose
