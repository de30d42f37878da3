"""The local search of one rigid module for the particles of one work unit (pure arrays, no I/O, no MPI).

Frame
    The target module is recentred: its centre of mass sits at the box centre (`modules.py`), and every
    particle's preliminary pose (A0, o0) is expressed in that frame. The experimental image is moved by
    its preliminary origin (a sub-pixel phase ramp), so the module's centre projects onto the image
    centre, where the round 2D mask of the CCC sits.

Band and working grid (speed without loss)
    The score uses the Fourier band ``|k| ≤ band_radius_px`` (`SearchSettings.band_radius_px`, chosen by the
    run from the data: where the signal ends). Images and references are Fourier-cropped to the smallest
    even working box n ≥ 2·(band + 1) that holds it (the same frequency indices; a pixel of the working grid
    is N/n pixels of the image), so every array of the search is (n/N)² the size, the projections sample
    only the band, and the mask's J pixels are (nearly) independent samples of the band-limited image.
    ``spectral_weight`` (per frequency radius) multiplies image and references alike (whitening).

Candidates (paper Eqs. 10–16, SPEC §3.3)
    Directions: the evenly distributed set D (`candidates.direction_grid`) within the cone α0 of the
    particle's projection direction e_r0. ψ centre: the preliminary pose carried along the great arc
    e_r0 → e_ri without in-plane turning, ``A_i = A0 · Gᵀ`` (parallel transport, Eqs. 12–14).
    ψ grid: every direction d of D has one fixed *canonical frame* B_d (a pose whose third row is d,
    defined once for the whole sphere, `canonical_frames`), and the in-plane angles searched are the
    lattice ``Rz(m·d1) · B_d`` with the ``2·t1 + 1`` integers m nearest to the transported centre
    ``A_i · B_dᵀ = Rz(β_i)`` (Eq. 15 with the lattice phase fixed per direction instead of per particle:
    same step, same range, within ±d1/2). Shifts: the image-frame origin ``o0 + u``, u on a grid of
    d2-pixel steps within ±t2 steps (Eq. 16).

Why the canonical frames and patches: a candidate ``(Rz(β) · B_d, o0 + u)`` predicts the centred image
    ``f(x) = P_{B_d}(R2(β)ᵀ (x + u))``, so the *patch* ``h(z) = f(R2(β) z − u)`` over the mask pixels z
    equals the reference ``P_{B_d}(z)``: the projections ``P_{B_d}`` of a work unit (one projection
    class) are computed once and shared by all of its particles, and each particle resamples its own
    image once per (β, u) (`kernels`, ``sample_shift_grid``: bilinear from the image on a fine grid of q
    pixels per image pixel, so that the whole-pixel shifts are whole fine pixels, and at least `UPSAMPLING`
    fine pixels per working pixel). The
    mask is fixed on the reference, i.e. it follows the module, so the reference side of Eq. 1 is the
    same for every shift and the score of the (β, u) rows of one angle against the references whose ψ range
    holds that angle is one matrix product.

Score (paper Eq. 1, `score.py`). Mode ``subtract`` (Discussion, Eqs. 17–25) first removes the rest of the
    complex, ``f1A = f1 − k · CTF ⊛ P_A0[V_rest]``, where (a, k, b) are fitted per particle by linear least
    squares of the image against the two preliminary projections (target and rest) plus a constant, over
    the band (fitting the target too keeps k unbiased where the two overlap). Mode ``composite``
    (Eqs. 2–8) compares the image with ``CTF ⊛ (P_cand[V_m] + P_A0[V_rest])``, the rest sampled like the image.

Strategies: ``simultaneous`` (Fig. 3A): all (direction, ψ, shift), the best shift then refined by a
    parabola. ``separate`` (Fig. 3B): n random (direction, ψ) of the particle's set, each over all
    shifts; their best shifts (sub-pixel, parabolic) are averaged; then all (direction, ψ) at that shift.

Angles between grid points (``search.angle_refinement: quadratic``, the default): the best grid pose is
    moved to the peak of a quadratic fitted to the scores of its grid neighbours at the chosen shift
    (`score.quadratic_peak_rotation`, at most half a step), as the shift's parabola does for pixels.
    ``none`` keeps the best grid pose (the paper).

Prior (``search.prior_sigma_deg`` / ``prior_sigma_px``, not in the paper; RELION multi-body has the same
    Gaussian priors on a body's rotation and translation): candidates are chosen by the log-posterior
    ``ℓ(ρ) − ½ (θ / σ_rot)² − ½ (|o − o_prior| / σ_px)²`` instead of ρ, θ the geodesic angle from the prior
    pose and ℓ the log-likelihood (``search.likelihood``, `score.Likelihood`: the profile over each candidate's
    amplitude and noise, or one amplitude for all the particle's candidates, estimated from ρ at the prior's
    centre). Its centre is the consensus pose (the module moves relative to the
    consensus), so later iterations do not wander. The sub-grid fits (parabola, quadratic) use ρ plus the
    prior's pull linearised at the chosen candidate (`score.prior_weight`).

CTF: references are ``CTF ⊛ P_{B_d}``. Since the image is turned by −β, the CTF used for a particle's
    references is its own with the astigmatism angle turned by +β̄ (β̄ = the particle's central in-plane
    angle); for astigmatism the few-degree spread of β around β̄ is neglected (exact for round CTFs).

Scores kept: every particle's scores of all the candidates it evaluated (`ParticleScores`) come back
    with the result, for estimates that use the whole score landscape rather than its maximum.

Determinism: every particle's result depends only on its own image, pose, CTF and seed, never on
    which other particles share its unit, so results do not depend on the number of ranks.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

from lorefine_mpi.geometry import candidates, rotations
from lorefine_mpi.kernels import backend
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import options, score

_SEAM_TILT_RAD = np.deg2rad(135.0)
UPSAMPLING = 1.75  # the image is resampled bilinearly from a grid at least this many times finer than the working grid


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The search in internal units (built from the config's `search` and `score` sections). The options may be given
    by their config names; they are held as the registries' objects (`search.options`)."""

    strategy: object  # options.STRATEGIES: separate or simultaneous
    mode: object  # options.SCORE_MODES: subtract or composite
    cone_half_angle_rad: float
    angular_step_rad: float
    psi_step_rad: float
    psi_half_steps: int  # t1
    max_shift_steps: int  # t2
    shift_step_px: int  # d2 (integer pixels)
    n_random_angles: int
    mask: np.ndarray  # (N, N) bool, the pixels of Eq. 1 in the original box, centred at N//2
    angle_refinement: object = "quadratic"  # options.ANGLE_REFINEMENTS: quadratic, or none (the best grid pose)
    prior_sigma_rad: float | None = None  # Gaussian prior on the rotation from the prior pose (None: flat, the paper)
    prior_sigma_px: float | None = None  # Gaussian prior on the origin from the prior origin (None: flat)
    band_radius_px: float | None = None  # the Fourier band the score uses, image px of the box (None: to Nyquist)
    spectral_weight: np.ndarray | None = None  # (N//2+1,) factor per frequency radius on image and references
    estimate: object = "map"  # options.ESTIMATORS: map (the best candidate, refined between grid points) or mean
    likelihood: object = "profile"  # score.LIKELIHOODS: profile or fixed_amplitude (a `score.Likelihood` class)
    max_poses: int = 1  # the candidate poses a particle keeps for its reconstruction (`PosePosterior`; 1: its estimate only)
    posterior_mass: float = 0.99  # ... the fewest of them that hold this much of its posterior (at most max_poses)
    # the rotation prior's shape: ω = rotvec(A0ᵀ A) (complex frame) ~ N(0, σ² S), S (3, 3) of determinant 1 (None: I)
    prior_rotation_shape: np.ndarray | None = None

    def __post_init__(self):
        for field, registry in (("strategy", options.STRATEGIES), ("mode", options.SCORE_MODES), ("angle_refinement", options.ANGLE_REFINEMENTS),
                                ("estimate", options.ESTIMATORS), ("likelihood", score.LIKELIHOODS)):
            value = getattr(self, field)
            if isinstance(value, str):
                object.__setattr__(self, field, registry[value])

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


@dataclasses.dataclass
class UnitInput:
    """What one work unit needs, all arrays row-aligned with the unit's p particles.

    images_ft: (p, N, N//2+1) complex64, the experimental images, lorefine's rfft2 layout (raw frame).
    matrices: (p, 3, 3) preliminary poses of the target module. origin_px: (p, 2) preliminary origins
        in the recentred frame (the module's centre at the box centre).
    ctf: callable ``ctf(rows, extra_angle_rad, pixels=None) -> (k, N, N//2+1) float32`` giving the CTF of the unit's
        particles ``rows`` with the astigmatism angle turned by ``extra_angle_rad`` (k,), or None (no CTF); with
        ``pixels`` (M,) (indices into the flattened grid: the search band's), (k, M) at those pixels only.
    rest_ft: (p, N, N//2+1) complex64, ``CTF ⊛ P[V_rest]`` at the rest's preliminary poses, raw frame, or
        None (only the band of the search is used).
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
class ParticleScores:
    """Everything one particle's search evaluated: Eq. 1 for each candidate.

    frames: (k, 3, 3) the canonical frames of its directions; ms: (T,) the in-plane lattice indices
    (pose ``Rz(ms[t]·d1) · frames[c]``); valid: (T, k) bool, which (ψ, direction) pairs are candidates;
    shifts_px: (S, 2) image-frame shifts u (origin o0 + u) of ``rho``'s last axis; rho: (T, k, S) float32,
    the CCC (−inf where not a candidate) — with the separate strategy S = 1, the shift it chose;
    shift_px: (2,) the sub-pixel shift chosen; at_shift: (T, k) float32, every angle's CCC at that shift;
    rho_centre: the CCC at the prior's centre (`score.Likelihood`; NaN with the profile likelihood).
    """

    frames: np.ndarray
    ms: np.ndarray
    valid: np.ndarray
    shifts_px: np.ndarray
    rho: np.ndarray
    shift_px: np.ndarray
    at_shift: np.ndarray
    rho_centre: float = float("nan")

    def likelihood(self, settings: "SearchSettings", n_pixels) -> score.Likelihood:
        """The log-likelihood its search ranked the candidates by."""
        return settings.likelihood(n_pixels, self.rho_centre)


@dataclasses.dataclass
class UnitResult:
    """matrix (p, 3, 3), origin_px (p, 2) recentred frame, score (p,) float32, rest_scale (p,) float32 (k);
    scores: one `ParticleScores` per particle; posteriors: one `PosePosterior` per particle."""

    matrix: np.ndarray
    origin_px: np.ndarray
    score: np.ndarray
    rest_scale: np.ndarray
    scores: list = dataclasses.field(default_factory=list)
    posteriors: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PosePosterior:
    """What a particle's posterior says beyond its estimate.

    matrices (c, 3, 3) and weights (c,): the fewest candidate rotations holding ``posterior_mass`` of the posterior
    over its rotations at its chosen shift (at most ``max_poses``; the best one at the estimate), weights summing to 1
    (`refine` inserts the particle at each, `reconstruction.poses: posterior`); angle_spread_rad: the posterior's RMS
    angle from the estimate over every candidate; shift_spread_px: the RMS shift from the posterior mean shift over the
    shifts the strategy scored (the grid of whole pixels: a posterior narrower than a pixel reads as at most ~0.5 px).
    """

    matrices: np.ndarray
    weights: np.ndarray
    angle_spread_rad: float
    shift_spread_px: float


def normalised_weights(log_weight) -> np.ndarray:
    """exp(log_weight − max), summing to 1 (float64); −inf entries weigh 0."""
    log_weight = np.asarray(log_weight, dtype=np.float64)
    w = np.exp(log_weight - log_weight.max())
    return w / w.sum()


def spread_about_mean(points, weights) -> float:
    """RMS distance of points (n, d) from their weighted mean."""
    mean = (weights[:, None] * points).sum(0)
    return float(np.sqrt((weights * ((points - mean) ** 2).sum(-1)).sum()))


def unit_directions(directions, matrices, cone_half_angle_rad) -> np.ndarray:
    """Indices into D of every direction inside the cone of at least one particle of the unit."""
    cos_cone = np.cos(cone_half_angle_rad) - 1e-12
    inside = (np.asarray(matrices)[:, 2, :] @ np.asarray(directions).T) >= cos_cone
    return np.nonzero(inside.any(axis=0))[0]


def fit_rest_scale(image_ft, target_ft, rest_ft) -> tuple[float, float]:
    """Least-squares ``image ≈ a·target + k·rest + b`` over the given spectra; returns (a, k).

    All three are (n, n//2+1) spectra of real images; the constant b is the DC term, so the fit uses the
    other Fourier coefficients (Parseval: the same least squares as in real space after removing means).
    When target and rest cannot be told apart (an ill-conditioned fit) k is not determined: (1, NaN).
    """
    weights = np.broadcast_to(fourier.half_axis_multiplicity(image_ft.shape[0]), image_ft.shape).copy()
    weights[0, 0] = 0.0
    basis = [target_ft, rest_ft]
    gram = np.array([[np.sum(weights * (u.conj() * v).real) for v in basis] for u in basis])
    rhs = np.array([np.sum(weights * (u.conj() * image_ft).real) for u in basis])
    if np.linalg.cond(gram) > 1e8:
        return 1.0, float("nan")
    a, k = np.linalg.solve(gram, rhs)
    return float(a), float(k)


def working_box(box: int, band_radius_px: float) -> int:
    """The smallest even box ≥ 2·(band + 1) (at most the image box) whose FFTs are fast."""
    size = min(box, 2 * int(np.ceil(band_radius_px - 1e-9)) + 2)
    while size < box and (size % 2 or backend().fast_size(size) != size):
        size += 1
    return size


class WorkGrid:
    """The search's working grid for a box N and a band: Fourier cropping, band mask, 2D mask pixels.

    box: N; size: n (even, ≤ N); scale: n / N (working px per image px); grid: the band's pixels
    (`fourier.BandGrid` of the working box); band_weight: (n, n//2+1) float32, the spectral weight inside
    the band and 0 outside; zx, zy: (J,) float64 working-grid coordinates of the mask pixels (px from the
    centre); mask_index: (J,) flat indices of those pixels in an (n, n) image.
    """

    def __init__(self, box: int, mask, band_radius_px=None, spectral_weight=None):
        self.box = int(box)
        band = self.box // 2 - 1 if band_radius_px is None else min(float(band_radius_px), self.box // 2 - 1)
        self.size = working_box(self.box, band)
        self.scale = self.size / self.box
        self.grid = fourier.band_grid(self.size, band)
        radius = np.rint(np.hypot(self.grid.kx, self.grid.ky)).astype(np.int64)
        weight = np.ones(len(radius)) if spectral_weight is None else np.asarray(spectral_weight, dtype=np.float64)[radius]
        self.grid_weight = weight.astype(np.float32)
        self.band_weight = np.zeros(self.size * (self.size // 2 + 1), dtype=np.float32)
        self.band_weight[self.grid.index] = self.grid_weight
        self.band_weight = self.band_weight.reshape(self.size, self.size // 2 + 1)
        # the fine grid the patches are sampled from: q fine px per image px, so whole-pixel shifts of the image
        # are whole fine pixels (`sample_shift_grid`), and at least UPSAMPLING fine px per working px
        self.fine_per_image_px = max(1, int(np.ceil(UPSAMPLING * self.size / self.box)))
        self.fine_size = self.fine_per_image_px * self.box
        # the mask on the working grid: each working pixel takes the value of the image pixel under its centre
        n, half = self.size, self.size // 2
        coords = (np.arange(n) - half) / self.scale + self.box // 2
        nearest = np.clip(np.rint(coords).astype(np.int64), 0, self.box - 1)
        inside = np.asarray(mask, dtype=bool)[np.ix_(nearest, nearest)]
        rows, cols = np.nonzero(inside)
        self.zx = (cols - half).astype(np.float64)
        self.zy = (rows - half).astype(np.float64)
        self.mask_index = rows * n + cols
        # where the band's frequencies sit in the image box's rfft2 layout (for the CTF)
        ky_image = np.where(self.grid.ky < 0, self.grid.ky + self.box, self.grid.ky).astype(np.int64)
        self.image_index = ky_image * (self.box // 2 + 1) + self.grid.kx.astype(np.int64)

    @property
    def n_pixels(self) -> int:
        return len(self.zx)

    @property
    def effective_pixels(self) -> float:
        """The independent samples among the mask's J pixels: J × (Fourier coefficients of the band / n²).
        The working image holds only the band (a disc in the n × n square of frequencies), so its pixels are
        correlated; this is the number of degrees of freedom the likelihood's J stands for (`score.log_likelihood`)."""
        multiplicity = fourier.half_axis_multiplicity(self.size)[self.grid.kx.astype(np.int64)]
        return self.n_pixels * float(multiplicity.sum()) / self.size**2

    def crop(self, spectra) -> np.ndarray:
        """Image-box spectra (…, N, N//2+1) → the working box, weighted, zero outside the band."""
        return fourier.crop_spectrum(spectra, self.size) * self.band_weight

    def templates(self, band_values, normalise=True) -> np.ndarray:
        """References from their band samples (r, M) complex: real space over the mask (r, J) float32, each
        row centred and of unit norm (``normalise``), or as they are (the composite score needs their scale)."""
        real = fourier.to_real(self.grid.unpack(band_values * self.grid_weight), self.size)
        rows = real.reshape(len(real), -1)[:, self.mask_index]
        return score.normalise_rows(rows) if normalise else rows

    def templates_of(self, band_values, normalise=True) -> list:
        """`templates` of several particles' band samples (a list of (r_i, M)) in one batch: a list of (r_i, J)."""
        counts = np.cumsum([len(v) for v in band_values])[:-1]
        return np.split(self.templates(np.concatenate(band_values), normalise), counts)

    def upsampled(self, spectrum) -> np.ndarray:
        """A working-grid spectrum (n, n//2+1) as a real image on the fine grid (``fine_size``², float32)."""
        return fourier.upsampled_image(spectrum, self.size, self.fine_size)

    def upsampled_batch(self, spectra) -> np.ndarray:
        """`upsampled` of several spectra (a list of (n, n//2+1)) in one batch: (p, fine_size, fine_size) float32."""
        return fourier.upsampled_image(np.stack(spectra), self.size, self.fine_size)

    def patches(self, upsampled, angles_rad, shifts_px) -> np.ndarray:
        """Patches (Q, J) float32 ``f(R2(β) z − u)`` of an image on the fine grid (`upsampled`), for Q angles (rad)
        and image-frame shifts (Q, 2) in image px."""
        return backend().sample_patches(upsampled, self.zx, self.zy, angles_rad, np.asarray(shifts_px) * self.scale,
                                        factor=self.fine_size / self.size)

    def shift_steps(self, shifts_px) -> np.ndarray:
        """Whole-pixel image shifts (S, 2) as whole pixels of the fine grid (S, 2) int64 (`kernels.Backend.grid_scores`)."""
        steps = np.asarray(shifts_px, dtype=np.float64) * self.fine_per_image_px
        whole = np.rint(steps)
        if not np.allclose(steps, whole, atol=1e-9):
            raise ValueError(f"shifts {shifts_px} are not whole pixels")
        return whole.astype(np.int64)


class ReferenceCache:
    """Per-direction arrays of a stage's search (reference projections, or the templates made from them),
    computed in fixed blocks of `BLOCK` consecutive directions of D on first use and kept for the units that
    follow, least recently used dropped beyond ``budget_bytes``. Neighbouring units share most of their
    directions, so each direction is projected about once per stage instead of once per unit. A block is
    always computed whole, so its values do not depend on which unit asked first (the same bits on any number
    of ranks)."""

    BLOCK = 16
    BUDGET_BYTES = 256 * 2**20

    def __init__(self, budget_bytes: int = BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self._blocks: OrderedDict = OrderedDict()
        self._bytes = 0

    def rows(self, kind, ids, n_directions: int, compute) -> np.ndarray:
        """The rows of directions ``ids`` (ascending) of array kind ``kind`` (a hashable label), where
        ``compute(block_ids)`` makes the array of a block of direction ids."""
        parts = []
        for members in np.split(ids, np.flatnonzero(np.diff(ids // self.BLOCK)) + 1):  # the ids of each block
            b = int(members[0]) // self.BLOCK
            key = (kind, b)
            block = self._blocks.get(key)
            if block is None:
                block = compute(np.arange(b * self.BLOCK, min((b + 1) * self.BLOCK, n_directions)))
                self._blocks[key] = block
                self._bytes += block.nbytes
                while self._bytes > self.budget_bytes and len(self._blocks) > 1:
                    self._bytes -= self._blocks.popitem(last=False)[1].nbytes
            else:
                self._blocks.move_to_end(key)
            parts.append(block[members - b * self.BLOCK])
        return np.concatenate(parts)


@dataclasses.dataclass
class Particle:
    """One particle of a unit as its search sees it (`search.strategies`).

    index: its row in the unit; cands: its `ParticleCandidates`; frames (k, 3, 3): the canonical frames of its
    directions; templates (k, J): their references over the mask (with its CTF); image, rest: its working image and the
    rest of the complex (composite score, else None) on the fine grid; seed; centre: its `ParticlePrior`; ms (T,): its
    in-plane lattice indices and angles (T,) rad; valid (T, k): which (ψ, direction) pairs are candidates; posterior.
    """

    index: int
    cands: ParticleCandidates
    frames: np.ndarray
    templates: np.ndarray
    image: np.ndarray
    rest: np.ndarray | None
    seed: int
    centre: "ParticlePrior"
    ms: np.ndarray
    angles: np.ndarray
    valid: np.ndarray
    posterior: "Posterior"
    rho_centre: float = float("nan")


class UnitSearch:
    """The search of one unit: the unit's reference projections (from the stage's `ReferenceCache`), then all of its
    particles together (`search.strategies`), the back-end scoring a unit's particles × candidates per call.

    module_fvol: the recentred target module's padded Fourier volume (`fourier.FourierVolume`), holding
    at least the search's band. directions: (m, 3) the full direction set D. box: N. cache: a
    `ReferenceCache` to share with other searches of the same volume, directions and band (a new one if None).
    """

    def __init__(self, module_fvol, directions, settings: SearchSettings, box: int, cache: ReferenceCache | None = None):
        self.fvol = module_fvol
        self.directions = np.asarray(directions, dtype=np.float64)
        self.settings = settings
        self.box = box
        self.work = WorkGrid(box, settings.mask, settings.band_radius_px, settings.spectral_weight)
        t2, d2 = settings.max_shift_steps, settings.shift_step_px
        self.shifts_px = score.shift_grid(t2 * d2, d2)
        self.cache = ReferenceCache() if cache is None else cache

    def _references(self, ids) -> np.ndarray:
        """Reference projections (len(ids), M) complex64 of directions ``ids`` of D, in the band."""
        return fourier.project_band(self.fvol, canonical_frames(self.directions[ids]), self.work.grid)

    def run(self, unit: UnitInput, known=None) -> UnitResult:
        """The search of the unit's particles. known: None, or per particle None or the `ParticleScores` of an
        earlier search of it with the same reference, band and ranges (the prior's pilot): with an exhaustive
        strategy its Eq. 1 cube is used instead of computed again when its directions and in-plane indices are
        this search's (the same values: the cube of a particle does not depend on its unit)."""
        p = len(unit.matrices)
        out = UnitResult(np.empty((p, 3, 3)), np.empty((p, 2)), np.empty(p, np.float32), np.zeros(p, np.float32))
        batch = self._particles(unit, out.rest_scale)
        if self.settings.likelihood.needs_centre:
            self._centre_scores(batch)
        for i, (pose, shift_px, best, scores, posterior) in enumerate(self.settings.strategy.search(self, batch, known)):
            out.matrix[i], out.origin_px[i], out.score[i] = pose, unit.origin_px[i] + shift_px, best
            out.scores.append(scores)
            out.posteriors.append(posterior)
        return out

    def _particles(self, unit: UnitInput, rest_scale) -> list:
        """Every particle's `Particle` (its fitted rest scale k into ``rest_scale``)."""
        s, work = self.settings, self.work
        ids = unit_directions(self.directions, unit.matrices, s.cone_half_angle_rad)
        dirs = self.directions[ids]
        frames = canonical_frames(dirs)
        normalise = not (s.mode.scores_with_rest and unit.rest_ft is not None)  # the composite score needs their scale
        n_dirs = len(self.directions)
        p = len(unit.matrices)
        cands = [particle_candidates(unit.matrices[i], dirs, frames, s) for i in range(p)]
        if unit.ctf is None:  # (r, J) templates shared by every particle of the unit
            shared = self.cache.rows(("templates", normalise), ids, n_dirs, lambda block: work.templates(self._references(block), normalise))
            templates = [shared[c.direction_ids] for c in cands]
        else:  # (r, M) band samples, each particle's CTF applied to them
            references = self.cache.rows("references", ids, n_dirs, self._references)
            ctfs = [unit.ctf(np.array([i]), np.array([c.beta_centre_rad]), work.image_index)[0] for i, c in enumerate(cands)]
            templates = work.templates_of([references[c.direction_ids] * ctf for c, ctf in zip(cands, ctfs)], normalise)
        working = [self._working_image(unit, i) for i in range(p)]
        rest_scale[:] = [k for _, _, k in working]
        images = work.upsampled_batch([image for image, _, _ in working])
        rests = [None if rest is None else work.upsampled(rest) for _, rest, _ in working]
        batch = []
        for i, c in enumerate(cands):
            centre = ParticlePrior(unit.matrices[i] if unit.prior_matrices is None else unit.prior_matrices[i],
                                   np.zeros(2) if unit.prior_origin_px is None else unit.prior_origin_px[i] - unit.origin_px[i])
            ms = np.unique(c.m)
            # valid[t, k]: in-plane lattice index ms[t] belongs to direction k's ψ range
            valid = (c.m[None, :, :] == ms[:, None, None]).any(axis=2)
            particle_frames = frames[c.direction_ids]
            posterior = Posterior(s, work.effective_pixels, centre, particle_frames, ms, self.shifts_px)
            batch.append(Particle(i, c, particle_frames, templates[i], images[i], rests[i], unit.seeds[i], centre, ms,
                                  ms * s.psi_step_rad, valid, posterior))
        return batch

    def _centre_scores(self, batch) -> None:
        """ρ at the centre of each particle's prior (the candidate angle nearest its pose, at its origin), and the
        likelihood that needs it (`score.FixedAmplitudeLikelihood`)."""
        picks = [np.unravel_index(np.argmin(np.where(p.valid, p.posterior.angle_from_centre, np.inf)), p.valid.shape) for p in batch]
        rho = self._point_scores(batch, [p.angles[t : t + 1] for p, (t, k) in zip(batch, picks)], [p.centre.offset_px[None] for p in batch],
                                 [p.templates[k : k + 1] for p, (t, k) in zip(batch, picks)])
        for p, r in zip(batch, rho):
            p.rho_centre = float(r[0, 0])
            p.posterior.likelihood = self.settings.likelihood(self.work.effective_pixels, p.rho_centre)

    def _working_image(self, unit: UnitInput, i: int):
        """The particle's image on the working grid, centred on the module (and the rest with it in composite
        mode, or removed with its fitted scale in subtract mode): (spectrum, rest spectrum or None, k)."""
        work = self.work
        image = work.crop(unit.images_ft[i])
        rest, k = None, 0.0
        if unit.rest_ft is not None:
            rest = work.crop(unit.rest_ft[i])
            if self.settings.mode.subtracts_rest:
                ctf = 1.0 if unit.ctf is None else work.grid.unpack(unit.ctf(np.array([i]), np.zeros(1), work.image_index)[0])
                target = work.grid.unpack(fourier.project_band(self.fvol, unit.matrices[i : i + 1], work.grid))[0]
                target = fourier.shift_images_ft(target[None], unit.origin_px[i : i + 1] * work.scale)[0] * ctf * work.band_weight
                _, k = fit_rest_scale(image, target, rest)
                if np.isfinite(k):  # NaN (not determined, reported as such): the rest stays in the image
                    image = image - np.float32(k) * rest
                rest = None
        centring = -unit.origin_px[i : i + 1] * work.scale
        image = fourier.shift_images_ft(image[None], centring)[0]
        if rest is not None:
            rest = fourier.shift_images_ft(rest[None], centring)[0]
        return image, rest, k

    # -- the scores a strategy asks for, a whole unit per call --------------------------------------
    def _point_scores(self, batch, angles, shifts_px, templates) -> list:
        """Eq. 1 of each particle's image turned by each of its ``angles`` (Q_i,) and moved by the matching image-frame
        shift (Q_i, 2) px, against its ``templates`` (K_i, J): a list of (Q_i, K_i) float32."""
        work = self.work
        return backend().point_scores([p.image for p in batch], [p.rest for p in batch], work.zx, work.zy, angles,
                                      [np.asarray(s) * work.scale for s in shifts_px], work.fine_size / work.size, templates)

    def point_scores(self, batch, shifts) -> list:
        """Eq. 1 of every angle of each particle at its shift (2,) px, against each of its templates: a list of (T_i, K_i)."""
        return self._point_scores(batch, [p.angles for p in batch], [np.broadcast_to(shift, (len(p.ms), 2)) for p, shift in zip(batch, shifts)],
                                  [p.templates for p in batch])

    def grid_scores(self, batch, angle_ids, template_ids) -> list:
        """Eq. 1 of each particle's angles ``angle_ids`` (T_i,) at every whole-pixel shift of the grid (S) against its
        templates ``template_ids`` (K_i,): a list of (T_i, S, K_i) float32."""
        work = self.work
        return backend().grid_scores([p.image for p in batch], [p.rest for p in batch], work.zx, work.zy,
                                     [p.angles[t] for p, t in zip(batch, angle_ids)], work.shift_steps(self.shifts_px),
                                     work.fine_size / work.size, [p.templates[k] for p, k in zip(batch, template_ids)])

    def candidate_cubes(self, batch) -> list:
        """Eq. 1 of every (in-plane index ms[t], direction, shift) candidate of each particle: a list of (T, K, S)
        float32, −inf where ms[t] is not among the direction's indices. Each direction's indices are a run of 2·t1 + 1,
        so with the directions ordered by their first index, the candidates of one angle are a contiguous run of
        templates: only those products are computed (about half of the (angle, direction) pairs of a cone are
        candidates). The composite score computes every product (its rest term is shared by the row)."""
        composite = [p for p in batch if p.rest is not None]
        plain = [p for p in batch if p.rest is None]
        cubes = {}
        for p, grid in zip(composite, self.grid_scores(composite, [slice(None)] * len(composite), [slice(None)] * len(composite))):
            cubes[p.index] = np.where(p.valid[:, :, None], grid.transpose(0, 2, 1), -np.inf)
        orders, runs = [], []
        for p in plain:
            order = np.argsort(p.cands.m[:, 0], kind="stable")
            first = p.cands.m[order, 0]
            orders.append(order)
            runs.append(np.stack([np.searchsorted(first, p.ms - 2 * self.settings.psi_half_steps, "left"), np.searchsorted(first, p.ms, "right")], 1))
        work = self.work
        in_run_order = backend().candidate_cubes([p.image for p in plain], work.zx, work.zy, [p.angles for p in plain],
                                                 work.shift_steps(self.shifts_px), work.fine_size / work.size,
                                                 [p.templates[order] for p, order in zip(plain, orders)], runs)
        for p, order, cube in zip(plain, orders, in_run_order):
            cubes[p.index] = np.empty_like(cube)
            cubes[p.index][:, order] = cube
        return [cubes[p.index] for p in batch]

    def reusable(self, particle: Particle, earlier) -> np.ndarray | None:
        """The Eq. 1 cube of an earlier search of the particle when it holds this search's candidates, else None."""
        if earlier is not None and np.array_equal(earlier.ms, particle.ms) and np.array_equal(earlier.frames, particle.frames) and \
                np.array_equal(earlier.shifts_px, self.shifts_px):
            return earlier.rho
        return None

    def particle_scores(self, particle: Particle, rho, shift_px, at_shift, shifts_px=None) -> ParticleScores:
        return ParticleScores(particle.frames, particle.ms, particle.valid, self.shifts_px if shifts_px is None else shifts_px, rho, shift_px,
                              at_shift, particle.rho_centre)

    # -- the estimate and the posterior ------------------------------------------------------------------
    def pose_posterior(self, particle: Particle, scores, t, k, pose, shift_log_posterior) -> PosePosterior:
        """The particle's `PosePosterior` from the scores (T, k) of every angle at its shift, its best candidate (t, k),
        its estimate ``pose`` and the log-posterior (S,) of the shifts the strategy scored (``self.shifts_px``)."""
        s = self.settings
        tt, kk = np.nonzero(np.isfinite(scores))
        weights = normalised_weights(particle.posterior.log_posterior_of_angles(scores)[tt, kk])
        poses = candidate_pose(particle.frames[kk], particle.ms[tt], s.psi_step_rad)
        best = (tt == t) & (kk == k)
        poses[best] = pose  # the best candidate at its refined place
        angle_spread = float(np.sqrt((weights * rotations.geodesic_angle(poses, pose) ** 2).sum()))
        order = np.argsort(-weights, kind="stable")
        count = int(min(s.max_poses, np.searchsorted(np.cumsum(weights[order]), s.posterior_mass) + 1))
        if s.max_poses == 1:  # the estimate itself (the posterior mean with `search.estimate: mean`)
            kept, kept_weights = pose[None], np.ones(1)
        else:
            kept, kept_weights = poses[order[:count]], weights[order[:count]] / weights[order[:count]].sum()
        shift_weights = normalised_weights(shift_log_posterior)
        return PosePosterior(kept, kept_weights, angle_spread, spread_about_mean(self.shifts_px, shift_weights))

    def estimate(self, particle: Particle, scores, t, k) -> np.ndarray:
        """The particle's rotation from the scores (T, k) of every angle at its shift (``search.estimate``): the best
        candidate refined between grid points, or the posterior mean over the candidates."""
        frames, ms, posterior = particle.frames, particle.ms, particle.posterior
        refined = self._refined_pose(scores, t, k, frames, ms, posterior)
        estimator = self.settings.estimate
        if not estimator.uses_posterior:
            return estimator.rotation(refined, None, None, None, None)
        tt, kk = np.nonzero(np.isfinite(scores))
        best = candidate_pose(frames[k], ms[t], self.settings.psi_step_rad)
        poses = candidate_pose(frames[kk], ms[tt], self.settings.psi_step_rad)
        log_weight = posterior.log_posterior_of_angles(scores)[tt, kk]
        return estimator.rotation(refined, best, poses, log_weight, (tt == t) & (kk == k))

    def _refined_pose(self, scores, t, k, frames, ms, posterior) -> np.ndarray:
        """The best grid pose (in-plane index ms[t], direction k) or, with ``angle_refinement: quadratic``,
        that pose moved to the peak of the scores (t, k) of its grid neighbours (at one shift), with the
        prior's pull when there is one."""
        s = self.settings
        best = candidate_pose(frames[k], ms[t], s.psi_step_rad)
        if not s.angle_refinement.refines:
            return best
        step = max(s.angular_step_rad, s.psi_step_rad)
        # only directions within the fit's reach of the best one can hold a neighbour (a pose's angle from the best is
        # at least the angle between their directions): the same points, in the same order, as over all candidates
        reach = score.QUADRATIC_REACH_STEPS * step + 1e-6
        near = frames[:, 2, :] @ frames[k, 2, :] >= np.cos(reach)
        tt, kk = np.nonzero(np.isfinite(scores) & near[None, :])
        poses = candidate_pose(frames[kk], ms[tt], s.psi_step_rad)
        weight, centre = posterior.rotation_pull(scores[t, k], step)
        return score.quadratic_peak_rotation(best, poses, scores[tt, kk], step, prior_weight=weight, prior_centre=centre)


@dataclasses.dataclass(frozen=True)
class ParticlePrior:
    """The centre of one particle's prior: pose (3, 3), and its origin minus the preliminary one, offset_px (2,)
    (image frame), so that the prior's centre is at the search shift ``offset_px``."""

    pose: np.ndarray
    offset_px: np.ndarray


class Posterior:
    """The scores by which one particle's candidates are chosen (``search.prior_sigma_*``, ``search.likelihood``).

    Without a prior, the CCC itself (the paper). With one, the log-posterior in nats:
    ``ℓ(ρ) − ½ (θ / σ_rot)² − ½ (|u − u_prior| / σ_px)²``, ℓ the `score.Likelihood`, θ the geodesic angle of
    the candidate's pose from the prior pose and u its image-frame shift. Sub-grid refinements fit ρ and
    add the prior's pull, linearised at the chosen candidate (`score.prior_weight`).

    centre: the particle's `ParticlePrior` (its centre; a prior only with ``settings.prior_sigma_*``);
    frames: (K, 3, 3) the canonical frames of the particle's directions; ms (T,): its in-plane lattice
    indices; shifts_px (S, 2) the image-frame shift grid. ``likelihood`` is the profile's until the
    fixed-amplitude one is set with the particle's ρ at the centre.
    """

    def __init__(self, settings: SearchSettings, n_pixels, centre: ParticlePrior, frames, ms, shifts_px):
        self.settings, self.prior = settings, centre if settings.has_prior else None
        self.shifts_px = shifts_px
        self.likelihood = score.ProfileLikelihood(n_pixels)  # until `UnitSearch._centre_scores` sets the one that needs ρ_s
        self.angle_from_centre = self.angle_cost = None
        if settings.prior_sigma_rad is not None or settings.likelihood.needs_centre:
            poses = candidate_pose(frames[None], ms[:, None], settings.psi_step_rad)  # (T, K, 3, 3)
            self.angle_from_centre = rotations.geodesic_angle(poses, centre.pose)
        self.rotation_precision = None  # (3, 3) in the complex frame, rad⁻²: S⁻¹ / σ² (anisotropic prior)
        if settings.prior_sigma_rad is not None and settings.prior_rotation_shape is None:
            self.angle_cost = 0.5 * (self.angle_from_centre / settings.prior_sigma_rad) ** 2
        elif settings.prior_sigma_rad is not None:
            self.rotation_precision = np.linalg.inv(settings.prior_rotation_shape) / settings.prior_sigma_rad**2
            omega = rotations.rotation_vector(np.swapaxes(centre.pose, -1, -2) @ poses)  # (T, K, 3), complex frame
            self.angle_cost = 0.5 * np.einsum("tki,ij,tkj->tk", omega, self.rotation_precision, omega)

    @property
    def active(self) -> bool:
        return self.prior is not None

    def _shift_cost(self) -> np.ndarray:
        """(S,): ½ |u − offset|² / σ² of the grid shifts, or 0."""
        if self.settings.prior_sigma_px is None:
            return np.zeros(len(self.shifts_px))
        return 0.5 * ((self.shifts_px - self.prior.offset_px) ** 2).sum(-1) / self.settings.prior_sigma_px**2

    def _log_likelihood_minus_angle_cost(self, rho):
        """rho (T, K, ...) → log-likelihood less the rotation prior's cost of each (T, K); −inf where ρ is −inf (not a
        candidate: the profile log-likelihood alone would count it as ρ = 0, above a candidate of negative ρ)."""
        out = self.likelihood(rho)
        if self.angle_cost is None:
            return out
        return out - self.angle_cost.reshape(self.angle_cost.shape + (1,) * (out.ndim - 2))

    def of_cube(self, cube):
        """cube (T, K, S) of ρ → the scores to maximise (single precision, `score.Likelihood.of_cube`)."""
        if not self.active:
            return cube
        return self.log_posterior_of_cube(cube)

    def log_posterior_of_cube(self, cube):
        """cube (T, K, S) of ρ → the log-posterior of each candidate up to a constant (single precision)."""
        out = self.likelihood.of_cube(cube)
        if self.angle_cost is not None:
            out -= self.angle_cost.astype(np.float32)[:, :, None]
        out -= self._shift_cost().astype(np.float32)[None, None, :]
        return out

    def of_angles(self, cube):
        """cube (T, K) of ρ at one shift → the scores to maximise (the shift's prior is the same for all)."""
        return self._log_likelihood_minus_angle_cost(cube) if self.active else cube

    def log_posterior_of_angles(self, cube):
        """cube (T, K) of ρ at one shift → the log-posterior of each angle, up to a constant (the
        log-likelihood alone without a rotation prior)."""
        return self._log_likelihood_minus_angle_cost(cube)

    def log_posterior_of_shifts(self, rho):
        """rows rho (n, S) of ρ over the shift grid → their log-likelihood less the shift prior's cost (n, S)."""
        return self.likelihood(rho) - self._shift_cost()[None, :]

    def subpixel_shifts(self, rho):
        """The sub-pixel best shift (n, 2) of rows rho (n, S) over the grid (the rotation prior is the same
        along a row, so only the shift's prior counts here)."""
        if not self.active or self.settings.prior_sigma_px is None:
            return score.subpixel_peak(rho, self.shifts_px)
        best = np.argmax(self.likelihood(rho) - self._shift_cost()[None, :], axis=1)
        rows = np.arange(len(rho))
        weight = score.prior_weight(self.likelihood.slope(rho[rows, best]), self.settings.prior_sigma_px, self.settings.shift_step_px)
        centre = np.broadcast_to(self.prior.offset_px, (len(rho), 2))
        return score.subpixel_peak(rho, self.shifts_px, best=best, prior_weight=weight, prior_centre_px=centre)

    def rotation_pull(self, rho_best, step_rad):
        """(λ, prior pose) for `score.quadratic_peak_rotation`, or (0, None) without a rotation prior."""
        if self.angle_cost is None or self.prior is None:
            return 0.0, None
        weight = float(score.prior_weight(self.likelihood.slope(rho_best), self.settings.prior_sigma_rad, step_rad))
        if self.rotation_precision is None:
            return weight, self.prior.pose
        # anisotropic: the lab-frame rotation ω of a pose A = exp(ω) A0 is A0 ω_complex, so its precision is A0 S⁻¹ A0ᵀ
        shape_inverse = self.rotation_precision * self.settings.prior_sigma_rad**2
        return weight * (self.prior.pose @ shape_inverse @ self.prior.pose.T), self.prior.pose
