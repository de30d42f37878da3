"""The search's options as small objects, each kind in one registry: the config's allowed values are the
registries' names (`config.schema` reads them here), a name becomes its object once (`SearchSettings`), and no
other code compares option strings.

    STRATEGIES          separate (paper Fig. 3B, the default), simultaneous (Fig. 3A)
    SCORE_MODES         subtract (Discussion, Eqs. 17-25, the default), composite (Eqs. 2-8)
    ESTIMATORS          map (the best candidate, refined between grid points), mean (the posterior mean rotation)
    ANGLE_REFINEMENTS   quadratic (the peak of a quadratic through the best grid pose's neighbours), none (the grid)
    MEAN_MOTIONS        remove (the module's mean rigid motion relative to the consensus taken out), keep
    PRIORS              `PriorWidth.of`: auto (learned from the data), null (flat, the paper) or a width
    score.LIKELIHOODS   fixed_amplitude (the default), profile (`search.score`)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lorefine_mpi.geometry import candidates
from lorefine_mpi.search.registry import Option, Registry
from lorefine_mpi.search.strategies import Separate, Simultaneous

# -- strategies (paper Fig. 3; `search.strategies`) ----------------------------------------------------------
STRATEGIES = Registry("search.strategy", Separate(), Simultaneous())


# -- score modes (Eq. 1's simulated image) ------------------------------------------------------------------
class ScoreMode(Option):
    """What the experimental image is compared with when the rest of the complex is known (a module of several)."""

    subtracts_rest = False  # the rest is fitted (scale k per particle) and removed from the image before the search
    scores_with_rest = False  # the rest is added to each candidate's projection (the score needs unnormalised templates)


class Subtract(ScoreMode):
    """Discussion, Eqs. 17-25: ``f1 − k · CTF ⊛ P_A0[V_rest]`` against the module's projections (RELION multi-body)."""

    name = "subtract"
    subtracts_rest = True


class Composite(ScoreMode):
    """Eqs. 2-8: the image against ``CTF ⊛ (P_cand[V_m] + P_A0[V_rest])``."""

    name = "composite"
    scores_with_rest = True


SCORE_MODES = Registry("score.mode", Subtract(), Composite())


# -- the estimate of a particle's rotation ------------------------------------------------------------------
class Estimator(Option):
    """``rotation(refined, best, poses, log_weight)``: the particle's rotation from the best candidate moved between
    grid points (``refined``, 3×3), the best grid pose, every candidate's pose (c, 3, 3) and its log-posterior (c,)."""

    uses_posterior = False


class MapEstimate(Estimator):
    """The best candidate by likelihood and prior, refined between grid points."""

    name = "map"

    def rotation(self, refined, best, poses, log_weight, best_index):
        return refined


class MeanEstimate(Estimator):
    """The posterior mean: the mean, weighted by the posterior, of the candidates' rotations about the best one (the
    best at its refined place)."""

    name = "mean"
    uses_posterior = True

    def rotation(self, refined, best, poses, log_weight, best_index):
        from lorefine_mpi.geometry import rotations

        omega = rotations.rotation_vector(poses @ best.T)
        omega[best_index] = rotations.rotation_vector(refined @ best.T)
        weight = np.exp(log_weight - log_weight.max())
        return rotations.from_rotation_vector((weight[:, None] * omega).sum(0) / weight.sum()) @ best


ESTIMATORS = Registry("search.estimate", MapEstimate(), MeanEstimate())


# -- angles between grid points -------------------------------------------------------------------------------
class AngleRefinement(Option):
    refines = False


class QuadraticRefinement(AngleRefinement):
    """The best grid pose moved to the peak of a quadratic fitted to its grid neighbours' scores (`score.quadratic_peak_rotation`)."""

    name = "quadratic"
    refines = True


class NoRefinement(AngleRefinement):
    """The best grid pose (the paper)."""

    name = "none"


ANGLE_REFINEMENTS = Registry("search.angle_refinement", QuadraticRefinement(), NoRefinement())


# -- the module's mean motion ----------------------------------------------------------------------------------
class MeanMotion(Option):
    removes = False


class RemoveMeanMotion(MeanMotion):
    """A module's map and poses are defined only up to a common rigid motion: its mean relative to the consensus poses
    is taken out after each search, so the module stays in the consensus frame."""

    name = "remove"
    removes = True


class KeepMeanMotion(MeanMotion):
    name = "keep"


MEAN_MOTIONS = Registry("search.mean_motion", RemoveMeanMotion(), KeepMeanMotion())


# -- the poses a particle is reconstructed from -----------------------------------------------------------------
class ReconstructionPoses(Option):
    marginalises = False


class BestPose(ReconstructionPoses):
    """Each particle inserted once, at its estimate (the paper)."""

    name = "best"


class PosteriorPoses(ReconstructionPoses):
    """Each particle inserted at the candidates holding ``reconstruction.posterior_mass`` of its posterior (at most
    ``reconstruction.max_poses``), each weighted by its posterior probability (RELION marginalises over all of them)."""

    name = "posterior"
    marginalises = True


RECONSTRUCTION_POSES = Registry("reconstruction.poses", PosteriorPoses(), BestPose())


# -- the prior on the module's motion ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PriorWidth:
    """One width of the Gaussian prior on a module's motion (rotation or shift), as configured: learned from the data
    (``auto``), flat (``null``, the paper) or given. sigma: the given width in internal units (rad or px), else None."""

    learned: bool
    sigma: float | None

    AUTO = "auto"

    @classmethod
    def of(cls, value, to_internal=float) -> "PriorWidth":
        """From a config value (``auto``, None or a number in the config's unit, converted by ``to_internal``)."""
        if value == cls.AUTO:
            return cls(True, None)
        return cls(False, None if value is None else float(to_internal(value)))

    def describe(self, unit: str) -> str:
        return "auto" if self.learned else ("flat" if self.sigma is None else f"{self.sigma:g}{unit}")


def is_auto(value) -> bool:
    """Whether a config value that may be ``auto`` (a prior width, ``search.max_resolution_angstrom``) is."""
    return isinstance(value, str) and value == PriorWidth.AUTO


def uses_ctf(setting, has_ctf: bool) -> bool:
    """``score.ctf``: auto (the STAR file's CTF when it has one), true or false."""
    return has_ctf if is_auto(setting) else bool(setting)


def candidate_counts(search) -> dict:
    """How many candidates the search settings imply per particle (for `lorefine check`).

    search: an object with strategy, cone_half_angle_deg, angular_step_deg, psi_half_range_deg,
    psi_step_deg, max_shift_px, shift_step_px, n_random_angles. n_directions is the mean over 200
    directions spread over the sphere (the cone content varies by ±1 or 2 with the direction).
    """
    grid = candidates.direction_grid(np.deg2rad(search.angular_step_deg))
    probes = candidates.direction_grid(np.deg2rad(14.0))[:200]
    cos_cone = np.cos(np.deg2rad(search.cone_half_angle_deg)) - 1e-12
    step = candidates.rows_at_once(len(grid))
    counts = np.concatenate([((probes[i : i + step] @ grid.T) >= cos_cone).sum(axis=1) for i in range(0, len(probes), step)])
    n_dirs = float(counts.mean())
    n_psi = len(candidates.psi_offsets_rad(np.deg2rad(search.psi_half_range_deg), np.deg2rad(search.psi_step_deg)))
    t2 = int(np.floor(search.max_shift_px / search.shift_step_px + 1e-9))
    n_shifts = (2 * t2 + 1) ** 2
    n_orient = n_dirs * n_psi
    evaluations = STRATEGIES[search.strategy].evaluations_per_particle(n_orient, n_shifts, search.n_random_angles)
    return {
        "n_directions": n_dirs,
        "n_psi": n_psi,
        "n_orientations": n_orient,
        "n_shifts": n_shifts,
        "evaluations_per_particle": evaluations,
    }
