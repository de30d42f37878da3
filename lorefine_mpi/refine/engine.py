"""The stages of a LO-refinement run, computed with no communicator: the same code serves one process
and every MPI rank (`refine.run` decides who computes what, through its distributor, and gathers the results).

A run is a sequence of *stages*, one per (iteration, module):
    1. split (`begin_stage`): module map ``V·M``, recentred so its centre of mass is at the box centre;
       the rest of the complex for the subtract/composite scores (`rest_components`): every other module
       at its latest map and poses (Gauss-Seidel: a module refined earlier in this iteration enters with
       its new map and poses, the others with the iteration's model and their poses of the last iteration,
       or the consensus poses) plus the unmasked remainder at the consensus poses;
    2. search (`StageSearch.search_unit`): the particles of one work unit (`work_units`: projection-class
       chunks) against the module's reference projections (`search.local`), in the stage's Fourier band
       (`search_band`: ``search.max_resolution_angstrom``, or where a fixed sample of images stops matching
       the other half's projections of the module); each particle's result depends only on its own image,
       pose, CTF and seed. Once every unit is in, `final_poses` takes the
       mean rigid motion of the module's poses relative to the consensus poses out
       (``search.mean_motion: remove``): the map and poses of a module are only defined up to a common
       motion, and without this the module drifts from the consensus frame over iterations;
    3. reconstruct (`backproject`, `write_module`): the refined poses back-projected into half-map
       accumulators, one per process (`accumulator`), each process taking its share of fixed blocks of particles
       of its half (`reconstruction_blocks`),
       every inserted term rounded to a grid on which float64 addition is exact (`ExactSum`), so that
       summing in any order and grouping gives the same bits; the half
       maps, the masked map (in the consensus frame), the FSC and the module's STAR file.
After each iteration the refined modules are combined into the model of the next iteration (`combine`).

Reference volumes (padded Fourier transforms) are allocated through ``allocate(shape, dtype, fill)``, given
by the driver: node-shared memory under MPI, a plain array in one process.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from lorefine_mpi.geometry import candidates, rotations, volumes
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star, relative_image_names, write_star
from lorefine_mpi.projection import fourier
from lorefine_mpi.projection.source import ParticleSource
from lorefine_mpi.reconstruction.backproject import BackProjector, image_batch
from lorefine_mpi.reconstruction.reconstruct import backproject_into, half_subsets, with_full
from lorefine_mpi.refine import layout, partition
from lorefine_mpi.search import band, local, options, prior
from lorefine_mpi.validation import fsc as fsc_mod
from lorefine_mpi.validation import motion as motion_mod

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Poses:
    """matrices (n, 3, 3) and origin_px (n, 2), consensus frame; and the poses each particle is inserted at,
    posterior_matrices (n, K, 3, 3), posterior_origin_px (n, K, 2) with weights (n, K) (None: the poses themselves)."""

    matrices: np.ndarray
    origin_px: np.ndarray
    posterior_matrices: np.ndarray | None = None
    posterior_origin_px: np.ndarray | None = None
    weights: np.ndarray | None = None

    def as_fields(self) -> dict:
        """The `io.results.pose_fields` of these poses."""
        return {"matrix": self.matrices, "origin_px": self.origin_px, "posterior_matrix": self.posterior_matrices,
                "posterior_origin_px": self.posterior_origin_px}


def prior_widths(search) -> tuple[options.PriorWidth, options.PriorWidth]:
    """The prior's rotation (rad) and shift (px) widths as configured (`options.PriorWidth`: learned, flat or given)."""
    return options.PriorWidth.of(search.prior_sigma_deg, np.deg2rad), options.PriorWidth.of(search.prior_sigma_px)


def uses_ctf(cfg, table) -> bool:
    """Whether the run's scores and maps use the particles' CTFs (``score.ctf``: auto = when the STAR file has them)."""
    return options.uses_ctf(cfg.score.ctf, table.has_ctf)


PRIOR_SAMPLE = 300  # particles whose flat-prior scores teach each stage the prior's widths
PRIOR_CLASS_SPACING_DEG = 7.5
PILOT_KEEP_BYTES = 256 * 2**20  # the pilot's score cubes kept for the stage's own (simultaneous) search


def search_settings(cfg, module_mask, centre_px, box, band_radius_px=None, module=None, spectral_weight=None) -> local.SearchSettings:
    """The search of a module: ``cfg.search`` with the module's own values (`ModuleConfig.search`) in place
    (a learned prior's widths are set once learned, `StageSearch.use_prior`)."""
    s = cfg.search if module is None else module.search(cfg.search)
    diameter = s.mask_diameter_px or volumes.auto_mask_diameter_px(module_mask, centre_px, box, s.max_shift_px)
    step = int(s.shift_step_px)
    rot, shift = prior_widths(s)
    return local.SearchSettings(
        strategy=s.strategy,
        mode=cfg.score.mode,
        cone_half_angle_rad=np.deg2rad(s.cone_half_angle_deg),
        angular_step_rad=np.deg2rad(s.angular_step_deg),
        psi_step_rad=np.deg2rad(s.psi_step_deg),
        psi_half_steps=int(np.floor(s.psi_half_range_deg / s.psi_step_deg + 1e-9)),
        max_shift_steps=int(np.floor(s.max_shift_px / step + 1e-9)),
        shift_step_px=step,
        n_random_angles=s.n_random_angles,
        mask=volumes.circular_mask(box, diameter),
        angle_refinement=s.angle_refinement,
        prior_sigma_rad=rot.sigma,
        prior_sigma_px=shift.sigma,
        band_radius_px=band_radius_px,
        spectral_weight=spectral_weight,
        estimate=s.estimate,
        likelihood=s.likelihood,
        max_poses=max_poses(cfg),
        posterior_mass=cfg.reconstruction.posterior_mass,
    )


def max_poses(cfg) -> int:
    """The poses each particle is inserted at (at most): ``reconstruction.max_poses`` with ``reconstruction.poses:
    posterior``, else 1 (its estimate)."""
    return cfg.reconstruction.max_poses if options.RECONSTRUCTION_POSES[cfg.reconstruction.poses].marginalises else 1


BAND_SAMPLE = 1000  # particles compared with the module's projections to find the search's band
BAND_PART_BYTES = 32 << 20  # the band's images, CTFs and projections are made this many bytes of spectra at a time


def sample_particles(n: int, seed: int, size: int = BAND_SAMPLE) -> np.ndarray:
    """A fixed random sample of particle indices (ascending), the same on every run and rank count."""
    return np.sort(np.random.default_rng([seed, 17]).choice(n, size=min(n, size), replace=False))


def particle_seeds(seed: int, iteration: int, module_index: int, n: int) -> np.ndarray:
    """One seed per particle, independent of units and ranks."""
    base = np.random.SeedSequence([seed, iteration, module_index]).generate_state(1)[0]
    return (np.uint64(base) + np.arange(n, dtype=np.uint64)).astype(np.int64) & 0x7FFFFFFFFFFF


def plain_allocate(shape, dtype, fill) -> np.ndarray:
    """The one-process allocator: a private array filled by ``fill(out)``."""
    out = np.empty(shape, dtype=dtype)
    fill(out)
    return out


# -- reconstruction in fixed blocks, summed exactly --------------------------------------------------

BLOCK_MIN, BLOCK_MAX = 64, 256


def reconstruction_blocks(n: int) -> list[np.ndarray]:
    """Particle blocks of the back-projection: consecutive particles, a size that depends on n only
    (about n / 256, within [64, 256]), so the blocks are the same however many processes share them."""
    size = int(min(BLOCK_MAX, max(BLOCK_MIN, math.ceil(n / 256))))
    return [np.arange(start, min(start + size, n)) for start in range(0, n, size)]


# A particle's inserted values |CTF·F(k)| are at most |CTF|max · Σ|f| (the L1 norm of its image), and one
# image adds, with trilinear weights, at most a few of its samples to any voxel (its slice's samples are at
# least one padded voxel apart): TRILINEAR_BOUND covers that with room to spare.
TRILINEAR_BOUND = 64.0


class ExactSum:
    """A fixed grid on which float64 sums of the accumulators are exact, whatever their order.

    With ``bound`` ≥ the sum of the absolute values of every contribution to one element (over all
    particles of the stage), terms rounded to multiples of ``2^e · 2^-52`` (``2^e ≥ bound``) add exactly:
    every partial sum is a multiple of that step below 2^52 steps, which float64 holds exactly. The
    back-projection rounds every term it adds (`BackProjector` ``steps``: in the kernel, no pass over
    the accumulators); the error is below ``2^-53 · bound`` per term.
    """

    def __init__(self, data_bound: float, weight_bound: float):
        self.data_step = self._step(data_bound)
        self.weight_step = self._step(weight_bound)

    @staticmethod
    def _step(bound: float) -> float:
        if not np.isfinite(bound) or bound <= 0:
            return 0.0
        return math.ldexp(1.0, math.frexp(bound)[1] - 52)

    @property
    def steps(self) -> tuple[float, float]:
        """(data step, weight step) for `BackProjector`."""
        return self.data_step, self.weight_step


@dataclasses.dataclass(frozen=True)
class Stage:
    """One (iteration, module) of the run. name: its group in results.h5 (``iteration_01/large``)."""

    name: str
    iteration: int
    index: int
    module_name: str


@dataclasses.dataclass
class StageState:
    """What a stage fixes before its search: the module's centre (xyz px from the box centre), its
    preliminary poses, and the model and poses the rest of the complex is made of."""

    stage: Stage
    centre_px: np.ndarray
    prelim: Poses
    model: np.ndarray
    module_maps: list
    poses: list


class RefineEngine:
    """The inputs of a run, held once per process, and the stages' computations.

    cfg: the validated `Config`. allocate: ``allocate(shape, dtype, fill) -> array`` for the reference
    volumes (every process of a node calls it in the same order; `plain_allocate` in one process).
    """

    def __init__(self, cfg, allocate=plain_allocate):
        self.cfg = cfg
        self.allocate = allocate
        self.folder = layout.RunFolder.planned(cfg)  # iterations: auto: the last one not known until the poses settle (`refine.run`)
        self.table = read_star(cfg.particles, cfg.project_dir)
        self.consensus, self.voxel = mrc.read_map(cfg.consensus_map)
        self.box = self.consensus.shape[0]
        self.masks = [np.ones_like(self.consensus) if m.mask is None else np.clip(mrc.read_map(m.mask)[0], 0, 1) for m in cfg.modules]
        self.use_ctf = uses_ctf(cfg, self.table)
        self.directions = candidates.direction_grid(np.deg2rad(cfg.search.angular_step_deg))
        self.source = ParticleSource(self.table, self.box, self.use_ctf)
        self.mean_motion = options.MEAN_MOTIONS[cfg.search.mean_motion]
        self.consensus_poses = Poses(self.table.matrices, self.table.origin_px.copy())
        self.subset = half_subsets(self.table, cfg.seed)
        self.n = len(self.table)

    # -- split ----------------------------------------------------------------------------------
    def begin_stage(self, stage: Stage, model, module_maps, poses) -> StageState:
        own = self.cfg.modules[stage.index].centre_px  # the module's rotation centre: its centre of mass unless set
        centre = volumes.centre_of_mass_px(model, self.masks[stage.index]) if own is None else np.asarray(own, dtype=np.float64)
        return StageState(stage, centre, poses[stage.index], model, list(module_maps), list(poses))

    def work_units(self, prelim: Poses) -> np.ndarray:
        """(n,) the work unit of each particle: projection-class chunks (independent of the ranks)."""
        p = self.cfg.parallel
        classes = partition.projection_classes(prelim.matrices, np.deg2rad(p.class_spacing_deg))
        return partition.work_units(classes, p.unit_size)[0]

    def rest_components(self, state: StageState) -> list:
        """[(volume, Poses)] of what is not the target module, for the scores that need it: every other
        module j as ``module_maps[j] · M_j`` at ``poses[j]``, and the model outside all masks at the consensus poses."""
        index = state.stage.index
        if self.cfg.modules[index].mask is None:
            return []
        if all(p is self.consensus_poses for p in state.poses):
            return [(state.model * (1.0 - self.masks[index]), self.consensus_poses)]
        parts = [(state.module_maps[j] * self.masks[j], state.poses[j]) for j in range(len(self.masks)) if j != index]
        remainder = np.clip(1.0 - sum(self.masks), 0.0, 1.0)
        if remainder.any():
            parts.append((state.model * remainder, self.consensus_poses))
        return parts

    def _fourier_volume(self, volume, radius_px=None) -> fourier.FourierVolume:
        """A volume's padded spectrum up to ``radius_px`` (default Nyquist), through the allocator."""
        pad = self.cfg.reconstruction.padding
        shape = fourier.band_shape(self.box, pad, radius_px)
        data = self.allocate(shape, np.complex64, lambda out: fourier.prepare_volume(volume, pad, out=out, radius_px=radius_px))
        return fourier.FourierVolume.from_array(data, self.box, pad, radius_px)

    # -- search ---------------------------------------------------------------------------------
    def search_band(self, state: StageState, reference_halves) -> tuple[float, np.ndarray, str]:
        """The Fourier band (image px) of the stage's search (`search.max_resolution_angstrom`), the whitening
        weight per frequency radius (N//2+1,) (`band.whitening_weights`) and how the band was found: a
        resolution given, or ``auto``: where a sample of images stops matching the module's projections
        (`search.band`), each image compared with the reference reconstructed from the *other* half of the
        particles (with the same half, its own noise would seem to match). reference_halves: the stage's
        reference's half maps, consensus frame, as a function of the half (`reference_halves`), or None when the band
        is given (the whitening then compares the images with the stage's reference itself). Each half's projections are
        gathered in one call and kept as their samples within the band; the images, the CTFs and the finished projections
        are made `BAND_PART_BYTES` of spectra at a time and summed image by image in the sample's order. Deterministic."""
        cfg, box, index = self.cfg, self.box, state.stage.index
        prelim, centre = state.prelim, state.centre_px
        ids = sample_particles(self.n, cfg.seed)
        origin = volumes.recentre_origins(prelim.matrices[ids], prelim.origin_px[ids], centre)
        grid = fourier.band_grid(box)
        projected = np.zeros((len(ids), len(grid.kx)), dtype=np.complex64)  # the projections' samples in the band
        # each half's images against the other half's map; without half maps (a band given), the stage's reference
        pairs = [(1, 2), (2, 1)] if reference_halves is not None else [(None, None)]
        for half, other in pairs:
            rows = np.arange(len(ids)) if half is None else np.nonzero(self.subset[ids] == half)[0]
            volume = state.model if other is None else reference_halves(other)  # read when needed: one map at a time
            fvol = fourier.prepare_volume(volumes.recentre(volume * self.masks[index], centre), cfg.reconstruction.padding)
            del volume
            projected[rows] = fourier.project_band(fvol, prelim.matrices[ids[rows]], grid)
            del fvol  # before the other half's: one padded spectrum at a time
        totals = band.pixel_totals(box)
        per_part = fourier.spectra_in(BAND_PART_BYTES, box)  # images a part (their spectra, CTFs, projections)
        for part in np.split(np.arange(len(ids)), range(per_part, len(ids), per_part)):  # in the sample's order: the same sums
            references = fourier.finish_projections(grid, projected[part], origin[part], self.source.ctf(ids[part]))
            band.add_pixel_totals(totals, self.source.spectra(ids[part]), references)
        del projected
        totals = band.rings_of_totals(totals)
        frc, samples = band.frc_of(totals, len(ids), box)
        weights = band.whitening_of(totals, len(ids), box)
        if not options.is_auto(cfg.search.max_resolution_angstrom):
            return band.band_from_resolution(cfg.search.max_resolution_angstrom, self.voxel, box), weights, "as configured"
        return band.signal_band(frc, samples, box), weights, f"from the FRC of {len(ids)} images with the other half's projections of the module"

    def reference_halves(self, state: StageState):
        """The half maps (consensus frame) of the reference the stage's module is searched against, as a function of the
        half (1 or 2) that reads that map when called: the consensus halves in iteration 1 (``OUT/consensus/``; None when
        the run has none: a band given), the module's half maps of the previous iteration after. Read when needed, one
        at a time: no rank keeps maps between stages."""
        iteration = state.stage.iteration
        if iteration == 1:
            if not self.has_consensus_halves():
                return None
            return lambda half: mrc.read_map(self.folder.consensus_half(half))[0]
        folder = self.folder.module_folder(state.stage.module_name, iteration - 1)
        return lambda half: mrc.read_map(folder.half(half))[0]

    def stage_search(self, state: StageState, band_radius_px=None, spectral_weight=None) -> "StageSearch":
        """The stage's searcher: its reference volumes (up to the band) allocated (collectively under MPI)
        and its settings."""
        index = state.stage.index
        module_fvol = self._fourier_volume(volumes.recentre(state.model * self.masks[index], state.centre_px), band_radius_px)
        rest = [(self._fourier_volume(volume, band_radius_px), rest_poses) for volume, rest_poses in self.rest_components(state)]
        settings = search_settings(self.cfg, self.masks[index], state.centre_px, self.box, band_radius_px, self.cfg.modules[index],
                                   spectral_weight)
        searcher = local.UnitSearch(module_fvol, self.directions, settings, self.box)
        seeds = particle_seeds(self.cfg.seed, state.stage.iteration, index, self.n)
        return StageSearch(self, state, searcher, rest, seeds)

    def final_poses(self, state: StageState, stored: dict):
        """The stage's poses from the search's (``stored``: its `io.results.search_fields`), with the mean motion taken
        out (`search.mean_motion`) of the estimates and the posterior poses alike: (Poses, rotation vector removed (3,)
        deg, shift removed (3,) px). Deterministic."""
        poses = Poses(stored["search_matrix"], stored["search_origin_px"], stored["search_posterior_matrix"],
                      stored["search_posterior_origin_px"], stored["posterior_weight"])
        rotation_deg, shift_px = np.zeros(3), np.zeros(3)
        if self.mean_motion.removes:
            reference = self.consensus_poses
            matrices, origin_px, motion = volumes.remove_mean_motion(
                poses.matrices, poses.origin_px, reference.matrices, reference.origin_px, state.centre_px
            )
            k = poses.posterior_matrices.shape[1]
            moved = volumes.apply_mean_motion(poses.posterior_matrices.reshape(-1, 3, 3), poses.posterior_origin_px.reshape(-1, 2),
                                              np.repeat(reference.matrices, k, axis=0), motion, state.centre_px)
            poses = Poses(matrices, origin_px, moved[0].reshape(-1, k, 3, 3), moved[1].reshape(-1, k, 2), poses.weights)
            rotation_deg, shift_px = np.rad2deg(rotations.rotation_vector(motion.rotation)), motion.shift_px
            log.info("%s: mean motion relative to the consensus taken out: %.3f° rotation, %.3f px shift",
                     state.stage.name, np.rad2deg(motion.angle_rad), np.linalg.norm(shift_px))
        return poses, rotation_deg, shift_px

    # -- reconstruction -------------------------------------------------------------------------
    def exact_sum(self, image_bound: float, ctf_bound: float) -> ExactSum:
        """The rounding grid of the stage's accumulators from the largest image L1 norm and |CTF| of any
        particle (both maxima over all particles, so every process gets the same grid)."""
        return ExactSum(TRILINEAR_BOUND * self.n * image_bound * ctf_bound, TRILINEAR_BOUND * self.n * ctf_bound**2)

    def image_bounds(self, ids) -> tuple[float, float]:
        """(max L1 norm of the images, max |CTF|) over the particles ``ids`` (0, 0 for none)."""
        return self.source.l1_bound(ids, image_batch(self.box)), self.source.ctf_bound(ids)

    def reconstruction_poses(self, state: StageState, poses: Poses) -> Poses:
        """The refined poses in the module's recentred frame, where it is rebuilt (sharper: the centre
        tolerates angular error best; `write_module` moves the maps back to overlay the consensus map)."""
        centred = volumes.recentre_origins(poses.matrices, poses.origin_px, state.centre_px)
        if poses.weights is None:
            return Poses(poses.matrices, centred)
        k = poses.weights.shape[1]
        posterior = volumes.recentre_origins(poses.posterior_matrices.reshape(-1, 3, 3), poses.posterior_origin_px.reshape(-1, 2),
                                             state.centre_px).reshape(-1, k, 2)
        return Poses(poses.matrices, centred, poses.posterior_matrices, posterior, poses.weights)

    def accumulator(self, exact: ExactSum) -> BackProjector:
        """A new half-map accumulator on ``exact``'s grid (`reconstruction.reconstruct.distributed_half_maps`): each process
        holds one while it back-projects and reconstructs, none in between (at box 256 it is 0.8 GiB)."""
        return BackProjector(self.box, self.cfg.reconstruction.padding, exact.steps)

    def backproject(self, centred: Poses, ids, accumulator: BackProjector) -> None:
        """Add the particles ``ids`` (any batch: the terms are on the exact-sum grid, so the grouping does not
        matter) at the poses ``centred`` (`reconstruction_poses`) to ``accumulator``."""
        if centred.weights is None or centred.weights.shape[1] == 1:  # one pose a particle: its estimate
            backproject_into(accumulator, self.source, ids, matrices=centred.matrices, origin_px=centred.origin_px, batch=image_batch(self.box))
        else:
            backproject_into(accumulator, self.source, ids, matrices=centred.posterior_matrices, origin_px=centred.posterior_origin_px,
                             weights=centred.weights, batch=image_batch(self.box))

    def rebuild(self, state: StageState, half_maps) -> dict:
        """The module's maps {'half1', 'half2', 'full'} (N, N, N) float32 from its half maps (recentred frame,
        `reconstruction.reconstruct.summed_half_maps`), moved back to overlay the consensus map."""
        return {k: volumes.shift_volume(v, state.centre_px) for k, v in with_full(*half_maps).items()}

    def write_module(self, state: StageState, maps, poses: Poses, stored: dict) -> None:
        """The module's maps (`rebuild`), FSC and STAR file in its output folder; the STAR file's extra columns (documented
        in the README): rlnLorefineScore (the best CCC), rlnLorefineAngleSpread (deg) and rlnLorefineShiftSpreadAngst (Å),
        the posterior's spreads (`search.local.PosePosterior`). stored: the stage's `io.results.search_fields`."""
        cfg, stage = self.cfg, state.stage
        module_mask = self.masks[stage.index]
        half_maps, full = [maps["half1"], maps["half2"]], maps["full"]
        folder = self.folder.module_folder(stage.module_name, stage.iteration)
        folder.path.mkdir(parents=True, exist_ok=True)
        mrc.write_map(folder.half(1), half_maps[0], self.voxel)
        mrc.write_map(folder.half(2), half_maps[1], self.voxel)
        mrc.write_map(folder.map, full * module_mask, self.voxel)
        mrc.write_map(folder.mask, module_mask, self.voxel)
        curve = fsc_mod.fsc(half_maps[0], half_maps[1], self.voxel, mask=module_mask, seed=cfg.seed)
        fsc_mod.write_fsc_json(folder / "fsc.json", {"half_maps_masked": curve})
        fsc_mod.plot_fsc_png(folder / "fsc.png", {f"{stage.module_name} half maps (masked)": curve}, f"{stage.name}: gold-standard FSC")
        rot, tilt, psi = rotations.matrix_to_euler(poses.matrices)
        write_star(
            folder.star, self.table, rot_rad=rot, tilt_rad=tilt, psi_rad=psi, origin_px=poses.origin_px,
            image_name=relative_image_names(self.table, cfg.project_dir),
            extra_columns={"rlnLorefineScore": stored["score"], "rlnLorefineAngleSpread": stored["angle_spread_deg"],
                           "rlnLorefineShiftSpreadAngst": stored["shift_spread_px"] * self.voxel},
        )
        motion_mod.plot_uncertainty_png(folder / "uncertainty.png", stored["angle_spread_deg"], stored["shift_spread_px"] * self.voxel,
                                        f"{stage.name}: each particle's pose uncertainty")
        log.info("%s: map %s, half-map FSC 0.143 at %.2f Å (masked)", stage.name, folder.map, fsc_mod.resolution_at(curve, 0.143))

    def write_consensus_halves(self, half_maps) -> None:
        """The half maps (half1, half2) of the consensus poses, written to ``OUT/consensus/`` (the band of the
        first iteration's searches is found against them)."""
        folder = self._store_consensus_halves(tuple(half_maps))
        log.info("consensus half maps (the consensus poses) in %s", folder)

    def given_consensus_halves(self) -> None:
        """The half maps of ``consensus_half_maps``, copied to ``OUT/consensus/`` (where a run that reconstructs
        them writes its own)."""
        maps = tuple(mrc.read_map(path)[0] for path in self.cfg.consensus_half_maps)
        folder = self._store_consensus_halves(maps)
        log.info("consensus half maps as given (%s, %s), copied to %s", *self.cfg.consensus_half_maps, folder)

    def _store_consensus_halves(self, maps) -> Path:
        """Write (half1, half2) as ``OUT/consensus/half1.mrc`` and ``half2.mrc``; returns the folder."""
        self.folder.consensus_folder.mkdir(parents=True, exist_ok=True)
        for h, volume in zip((1, 2), maps):
            mrc.write_map(self.folder.consensus_half(h), volume, self.voxel)
        return self.folder.consensus_folder

    def has_consensus_halves(self) -> bool:
        """Whether the run has written its consensus half maps (``OUT/consensus/``; written whole, each under a temporary
        name first)."""
        return self.folder.consensus_half(1).exists() and self.folder.consensus_half(2).exists()

    # -- combine --------------------------------------------------------------------------------
    def combine(self, model, maps) -> np.ndarray:
        """The updated model: each refined module inside its mask, the old model elsewhere (float32)."""
        total_mask = np.clip(sum(self.masks), 0.0, 1.0)
        combined = sum(m * mask for m, mask in zip(maps, self.masks)) + model * (1.0 - total_mask)
        return combined.astype(np.float32)

    def write_combined(self, iteration: int, combined) -> None:
        path = self.folder.combined(iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        mrc.write_map(path, combined, self.voxel)


class StageSearch:
    """One stage's search: the reference volumes and settings, and the search of a work unit."""

    def __init__(self, engine: RefineEngine, state: StageState, searcher, rest, seeds):
        self.engine, self.state, self.searcher, self.rest, self.seeds = engine, state, searcher, rest, seeds
        self.pilot_scores = {}  # particle id → its `local.ParticleScores` from this process's share of the prior's pilot

    def _unit(self, ids) -> local.UnitInput:
        """The search's input for the particles ``ids`` (ascending)."""
        e, prelim, centre = self.engine, self.state.prelim, self.state.centre_px
        images_ft = e.source.spectra(ids)
        ctf = None if not e.use_ctf else lambda rows, extra, pixels=None: e.source.ctf(ids[rows], extra, pixels)
        rest_ft = None
        if self.rest:
            ctf_all = None if ctf is None else ctf(np.arange(len(ids)), 0.0)
            rest_ft = sum(fourier.project(fvol, p.matrices[ids], p.origin_px[ids], ctf=ctf_all) for fvol, p in self.rest)
        origin_centred = volumes.recentre_origins(prelim.matrices[ids], prelim.origin_px[ids], centre)
        consensus = e.consensus_poses  # the centre of the prior: the module's motion is relative to the consensus
        return local.UnitInput(images_ft, prelim.matrices[ids], origin_centred, ctf, rest_ft, self.seeds[ids], consensus.matrices[ids],
                               volumes.recentre_origins(consensus.matrices[ids], consensus.origin_px[ids], centre))

    def search_unit(self, ids) -> dict:
        """The search of the particles ``ids`` (ascending): a dict of per-particle arrays keyed by the
        `io.results.UNIT_FIELDS` of results.h5, row-aligned with ``ids``."""
        known = [self.pilot_scores.pop(int(i), None) for i in ids] if self.pilot_scores else None
        found = self.searcher.run(self._unit(ids), known)
        centre, k = self.state.centre_px, self.searcher.settings.max_poses
        p = len(ids)
        matrices, weights = np.zeros((p, k, 3, 3)), np.zeros((p, k), np.float32)
        for i, posterior in enumerate(found.posteriors):
            c = len(posterior.weights)
            matrices[i, :c], weights[i, :c] = posterior.matrices, posterior.weights
            matrices[i, c:] = found.matrix[i]  # unused (weight 0): the estimate, a valid rotation
        origins = volumes.consensus_origins(matrices.reshape(-1, 3, 3), np.repeat(found.origin_px, k, axis=0), centre).reshape(p, k, 2)
        return {
            "search_matrix": found.matrix,
            "search_origin_px": volumes.consensus_origins(found.matrix, found.origin_px, centre),
            "score": found.score,
            "rest_scale": found.rest_scale,
            "search_posterior_matrix": matrices,
            "search_posterior_origin_px": origins,
            "posterior_weight": weights,
            "angle_spread_deg": np.array([np.rad2deg(q.angle_spread_rad) for q in found.posteriors], np.float32),
            "shift_spread_px": np.array([q.shift_spread_px for q in found.posteriors], np.float32),
        }

    def prior_pilot(self) -> "PriorPilot | None":
        """The pilot that learns the prior's widths configured as ``auto`` (`PriorPilot`), or None when
        neither is learned."""
        rot, shift = prior_widths(self.engine.cfg.modules[self.state.stage.index].search(self.engine.cfg.search))
        learn_rot, learn_px = rot.learned, shift.learned
        return PriorPilot(self, learn_rot, learn_px) if (learn_rot or learn_px) else None

    def configured_prior(self) -> tuple:
        """The prior as configured: (σ_rot rad, σ_px, rotation shape (3, 3) or None) (None: flat or not yet learned)."""
        s = self.searcher.settings
        return s.prior_sigma_rad, s.prior_sigma_px, s.prior_rotation_shape

    def use_prior(self, sigma_rot_rad, sigma_px, rotation_shape=None) -> None:
        """Search with this prior from now on (rotation_shape: `local.SearchSettings.prior_rotation_shape`)."""
        s = self.searcher
        settings = dataclasses.replace(s.settings, prior_sigma_rad=sigma_rot_rad, prior_sigma_px=sigma_px, prior_rotation_shape=rotation_shape)
        self.searcher = local.UnitSearch(s.fvol, s.directions, settings, s.box, s.cache)


class PriorPilot:
    """The stage's prior widths (σ_rot rad, σ_px), those configured as ``auto`` learned from a fixed sample of
    `PRIOR_SAMPLE` particles (`search.prior`: the widths that maximise the marginal likelihood of their
    flat-prior scores over every rotation and shift), the others as configured.

    The sample is cut into fixed units (grouped by projection class to share projections; not the run's
    parallel settings); any process can score any unit (`evidence`), and `widths` sums the per-particle
    evidence in the sample's order: the same on every rank count and resume."""

    def __init__(self, stage_search: StageSearch, learn_rot: bool, learn_px: bool):
        self.stage_search, self.learn_rot, self.learn_px = stage_search, learn_rot, learn_px
        e, settings = stage_search.engine, stage_search.searcher.settings
        self.settings = settings
        self.flat = dataclasses.replace(settings, strategy=options.STRATEGIES["simultaneous"], prior_sigma_rad=None, prior_sigma_px=None,
                                        angle_refinement=options.ANGLE_REFINEMENTS["none"], estimate=options.ESTIMATORS["map"])
        flat_width = 1e6  # a flat prior, for a width that is neither learned nor given
        self.grid_rot = np.deg2rad(prior.SIGMA_ROT_GRID_DEG) if learn_rot else np.array([settings.prior_sigma_rad or flat_width])
        self.grid_px = prior.SIGMA_PX_GRID if learn_px else np.array([settings.prior_sigma_px or flat_width])
        self.ids = sample_particles(e.n, e.cfg.seed, PRIOR_SAMPLE)
        classes = partition.projection_classes(stage_search.state.prelim.matrices[self.ids], np.deg2rad(PRIOR_CLASS_SPACING_DEG))
        self.units = partition.work_units(classes, len(self.ids))[1]  # positions in ids
        self._search = None
        self._kept_bytes = 0
        self.mine = {}  # position in the sample → (scores, likelihood, prior pose, prior offset) of this process's particles

    def empty(self) -> np.ndarray:
        """Zeros of the evidence's shape (len(sample), len(grid_rot), len(grid_px)), float64."""
        return np.zeros((len(self.ids), len(self.grid_rot), len(self.grid_px)))

    def evidence(self, units, out: np.ndarray) -> np.ndarray:
        """Fill the rows of ``out`` (`empty`) of the sample's ``units`` (indices into `units`) with each
        particle's log evidence over the grid of widths; returns ``out``."""
        st = self.stage_search
        if self._search is None:
            s = st.searcher
            self._search = local.UnitSearch(s.fvol, s.directions, self.flat, s.box, s.cache)
        for u in units:
            members = self.units[u]
            unit = st._unit(self.ids[members])
            found = self._search.run(unit)
            for j, scores in enumerate(found.scores):
                likelihood = scores.likelihood(self.flat, self._search.work.effective_pixels)
                offset = unit.prior_origin_px[j] - unit.origin_px[j]
                out[members[j]] = prior.log_evidence(scores, self.flat.psi_step_rad, likelihood, unit.prior_matrices[j], offset,
                                                     self.grid_rot, self.grid_px)
                self.mine[members[j]] = (scores, likelihood, unit.prior_matrices[j], offset)
                self._keep(int(self.ids[members[j]]), scores)
        return out

    @property
    def learns_shape(self) -> bool:
        """Whether the rotation's shape is learned too (with its width)."""
        return self.learn_rot

    def moments(self, sigma_rot_rad, sigma_px, out) -> np.ndarray:
        """Fill the rows of ``out`` (len(sample), 3, 3) of this process's particles (`evidence` ran on them) with their
        posterior E[ω ωᵀ] under the isotropic prior of these widths (`prior.rotation_moment`); returns ``out``."""
        for position, (scores, likelihood, pose, offset) in self.mine.items():
            out[position] = prior.rotation_moment(scores, self.flat.psi_step_rad, likelihood, pose, offset, sigma_rot_rad, sigma_px)
        return out

    def shaped_evidence(self, shape, sigma_px, out) -> np.ndarray:
        """Fill the rows of ``out`` (len(sample), len(grid_rot)) of this process's particles with their log evidence over
        the rotation widths, the rotation prior of shape ``shape`` and the shift's width ``sigma_px``; returns ``out``."""
        for position, (scores, likelihood, pose, offset) in self.mine.items():
            out[position] = prior.log_evidence(scores, self.flat.psi_step_rad, likelihood, pose, offset, self.grid_rot, np.array([sigma_px]),
                                               rotation_shape=shape)[:, 0]
        return out

    def _keep(self, particle: int, scores) -> None:
        """Keep a particle's scores for the stage's own search (`StageSearch.pilot_scores`): the simultaneous
        strategy then uses its Eq. 1 cube instead of computing it again; up to `PILOT_KEEP_BYTES`."""
        st = self.stage_search
        if not self.settings.strategy.exhaustive:
            return
        if self._kept_bytes + scores.rho.nbytes > PILOT_KEEP_BYTES:
            return
        st.pilot_scores[particle] = scores
        self._kept_bytes += scores.rho.nbytes

    def widths(self, evidence) -> tuple[float | None, float | None]:
        """The widths from every particle's evidence (`evidence` of all units), summed in the sample's order."""
        sigma_rot, sigma_px = prior.learn_widths(evidence.sum(axis=0), self.grid_rot, self.grid_px)
        return (sigma_rot if self.learn_rot else self.settings.prior_sigma_rad), (sigma_px if self.learn_px else self.settings.prior_sigma_px)

    def shaped_widths(self, evidence, shaped, shape):
        """(σ_rot, shape or None, evidence gained): the anisotropic prior of ``shape`` and its best width when the
        sample's evidence (``shaped``: `shaped_evidence` of every particle) gains more than `prior.SHAPE_EVIDENCE_NATS`
        over the isotropic one's best (``evidence``), else (None, None, gain)."""
        return prior.shaped_width(evidence.sum(axis=0), shaped.sum(axis=0), self.grid_rot, shape)
