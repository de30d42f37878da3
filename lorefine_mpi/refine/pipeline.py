"""`lorefine refine`: LO-refinement of every module, iterated, on 1 … many MPI ranks.

A run is a sequence of *stages*, one per (iteration, module):
    1. split: module map ``V·M``, recentred so its centre of mass is at the box centre; the rest of the
       complex for the subtract/composite scores: every other module at its latest map and poses
       (Gauss-Seidel: a module refined earlier in this iteration enters with its new map and poses, the
       others with the iteration's model and their poses of the last iteration, or the consensus poses)
       plus the unmasked remainder at the consensus poses;
       the node leader puts their padded Fourier transforms in node-shared memory;
    2. search: rank 0 partitions particles by projection class into work units and hands them out
       (`parallel.scheduler`); each unit's reference projections are computed once (`search.local`);
       rank 0 writes each finished unit to ``results.h5`` (the checkpoint); once all are in, the mean
       rigid motion of the module's poses relative to the consensus poses is taken out
       (``search.mean_motion: remove``): the map and poses of a module are only defined up to a common
       motion, and without this the module drifts from the consensus frame over iterations;
    3. reconstruct: every rank back-projects its block of particles with the refined poses into its own
       accumulators; they are summed on rank 0, which writes the half maps, the masked map (in the
       consensus frame), the FSC, and the module's STAR file.
After each iteration the refined modules are combined into the model of the next iteration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from lorefine_mpi import __version__
from lorefine_mpi.config import dump_config, search_fingerprint
from lorefine_mpi.config.check import check_inputs
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import candidates, rotations
from lorefine_mpi.io import mrc
from lorefine_mpi.io.results import ResultsFile
from lorefine_mpi.io.star import atomic_write_text, read_star, relative_image_names, write_star
from lorefine_mpi.parallel import partition, scheduler
from lorefine_mpi.parallel.shared import SharedArray
from lorefine_mpi.projection import ctf as ctf_model
from lorefine_mpi.projection import fourier
from lorefine_mpi.reconstruction.reconstruct import backproject_halves, half_subsets, maps_from_halves
from lorefine_mpi.refine.progress import ProgressLog
from lorefine_mpi.search import band, local, modules
from lorefine_mpi.validation import fsc as fsc_mod

log = logging.getLogger(__name__)

EXIT_STOPPED = 3


@dataclasses.dataclass
class Poses:
    """matrices (n, 3, 3) and origin_px (n, 2), consensus frame."""

    matrices: np.ndarray
    origin_px: np.ndarray


PRIOR_WINDOW_SIGMAS = 3.0  # search.prior_sigma_*: auto puts the search window's edge at 3 σ of the prior


def prior_sigmas(search) -> tuple[float | None, float | None]:
    """(σ_rot rad, σ_shift px) of the Gaussian prior, or None for a flat one; ``auto`` = window / 3."""
    rot, shift = search.prior_sigma_deg, search.prior_sigma_px
    rot = search.cone_half_angle_deg / PRIOR_WINDOW_SIGMAS if rot == "auto" else rot
    shift = search.max_shift_px / PRIOR_WINDOW_SIGMAS if shift == "auto" else shift
    return (None if rot is None else float(np.deg2rad(rot))), (shift or None)


def search_settings(cfg, module_mask, centre_px, box, band_radius_px=None, module=None) -> local.SearchSettings:
    """The search of a module: ``cfg.search`` with the module's own values (`ModuleConfig.search`) in place."""
    s = cfg.search if module is None else module.search(cfg.search)
    diameter = s.mask_diameter_px or modules.auto_mask_diameter_px(module_mask, centre_px, box, s.max_shift_px)
    step = int(s.shift_step_px)
    prior_rad, prior_px = prior_sigmas(s)
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
        mask=modules.circular_mask(box, diameter),
        angle_refinement=s.angle_refinement,
        prior_sigma_rad=prior_rad,
        prior_sigma_px=prior_px,
        band_radius_px=band_radius_px,
    )


BAND_SAMPLE = 1000  # particles compared with the module's projections to find the search's band


def sample_particles(n: int, seed: int, size: int = BAND_SAMPLE) -> np.ndarray:
    """A fixed random sample of particle indices (ascending), the same on every run and rank count."""
    return np.sort(np.random.default_rng([seed, 17]).choice(n, size=min(n, size), replace=False))


def particle_seeds(seed: int, iteration: int, module_index: int, n: int) -> np.ndarray:
    """One seed per particle, independent of units and ranks."""
    base = np.random.SeedSequence([seed, iteration, module_index]).generate_state(1)[0]
    return (np.uint64(base) + np.arange(n, dtype=np.uint64)).astype(np.int64) & 0x7FFFFFFFFFFF


class RefineRun:
    def __init__(self, cfg, ctx, *, command_line: str, resume: bool):
        self.cfg, self.ctx, self.resume = cfg, ctx, resume
        self.command_line = command_line
        self.out = Path(cfg.output)
        self.cpu_seconds = {}  # stage -> part -> CPU seconds of this rank

    # -- set-up ---------------------------------------------------------------------------------
    def _prepare(self):
        cfg, ctx = self.cfg, self.ctx
        error = None
        self.results = None
        if ctx.is_root:
            try:
                check_inputs(cfg)
                self.out.mkdir(parents=True, exist_ok=True)
                self.results = ResultsFile(
                    self.out / "results.h5",
                    image_names=read_star(cfg.particles, cfg.project_dir).image_name,
                    config_yaml=dump_config(cfg),
                    fingerprint=search_fingerprint(cfg),
                    command_line=self.command_line,
                    version=__version__,
                    resume=self.resume,
                )
                atomic_write_text(self.out / "config.yaml", dump_config(cfg))
            except InputError as e:
                error = e
        ctx.agree_on_error(error)
        self.table = read_star(cfg.particles, cfg.project_dir)
        self.consensus, self.voxel = mrc.read_map(cfg.consensus_map)
        self.box = self.consensus.shape[0]
        self.masks = [np.ones_like(self.consensus) if m.mask is None else np.clip(mrc.read_map(m.mask)[0], 0, 1) for m in cfg.modules]
        self.use_ctf = self.table.has_ctf if cfg.score.ctf == "auto" else bool(cfg.score.ctf)
        self.directions = candidates.direction_grid(np.deg2rad(cfg.search.angular_step_deg))
        self.reader = mrc.StackReader()
        A = self.table.matrices
        self.consensus_poses = Poses(A, self.table.origin_px.copy())
        self.subset = half_subsets(self.table, cfg.seed)
        self.centres = {}

    def run(self) -> int:
        started = time.time()
        self._prepare()
        cfg, ctx = self.cfg, self.ctx
        if cfg.search.max_resolution_angstrom == "auto":
            self._reconstruct_consensus_halves()
        model = self.consensus
        poses = [self.consensus_poses for _ in cfg.modules]
        for iteration in range(1, cfg.iterations + 1):
            maps = []
            for index, module in enumerate(cfg.modules):
                stage = f"iteration_{iteration:02d}/{module.name}"
                # Gauss-Seidel: the modules refined already in this iteration enter the rest with their new maps.
                module_maps = maps + [model] * (len(cfg.modules) - len(maps))
                refined = self._search_stage(stage, iteration, index, model, module_maps, poses)
                if refined is None:
                    if ctx.is_root:
                        log.warning(
                            "stopped on request with finished work saved in %s; resume with: lorefine refine %s --continue",
                            self.out / "results.h5", cfg.source,
                        )
                        print(f"lorefine: stopped; finished work is saved. Resume with: lorefine refine {cfg.source} --continue", flush=True)
                    return EXIT_STOPPED
                poses[index] = refined
                maps.append(self._reconstruct_stage(stage, iteration, index, refined))
            model = self._combine(model, maps, iteration)
        if ctx.is_root:
            self.results.close()
            log.info("done: outputs in %s", self.out)
        if cfg.postprocess.enabled:  # post-processing, local resolution, motion, report, table
            from lorefine_mpi.report.finish import finish_run

            finish_run(cfg, ctx, table=self.table, consensus_poses=self.consensus_poses, poses=poses, masks=self.masks,
                       voxel_size_angstrom=self.voxel, subset=self.subset, use_ctf=self.use_ctf, started=started)
        return 0

    # -- one stage: search --------------------------------------------------------------------
    def _rest_components(self, index, model, module_maps, poses):
        """[(volume, Poses)] of what is not the target module, for the scores that need it: every other
        module j as ``module_maps[j] · M_j`` at ``poses[j]``, and the model outside all masks at the consensus poses."""
        if self.cfg.score.mode not in ("subtract", "composite") or self.cfg.modules[index].mask is None:
            return []
        mask = self.masks[index]
        if all(p is self.consensus_poses for p in poses):
            return [(model * (1.0 - mask), self.consensus_poses)]
        parts = [(module_maps[j] * self.masks[j], poses[j]) for j in range(len(self.masks)) if j != index]
        remainder = np.clip(1.0 - sum(self.masks), 0.0, 1.0)
        if remainder.any():
            parts.append((model * remainder, self.consensus_poses))
        return parts

    def _shared_fvol(self, volume, radius_px=None):
        """A volume's padded spectrum up to ``radius_px`` (default Nyquist) in node-shared memory."""
        pad = self.cfg.reconstruction.padding
        shape = fourier.band_shape(self.box, pad, radius_px)
        shared = SharedArray(self.ctx, shape, np.complex64, lambda out: fourier.prepare_volume(volume, pad, out=out, radius_px=radius_px))
        return shared, fourier.FourierVolume.from_array(shared.array, self.box, pad, radius_px)

    def _search_band(self, stage, iteration, index, prelim, centre) -> float:
        """The Fourier band (image px) of the stage's search (`search.max_resolution_angstrom`): a resolution
        given, or ``auto``: where a sample of images stops matching the module's projections (`search.band`),
        each image compared with the reference reconstructed from the *other* half of the particles (with the
        same half, its own noise would seem to match). Rank 0; deterministic (a fixed sample), recorded in
        ``results.h5``."""
        cfg, box = self.cfg, self.box
        if cfg.search.max_resolution_angstrom != "auto":
            radius = band.band_from_resolution(cfg.search.max_resolution_angstrom, self.voxel, box)
            how = "as configured"
        else:
            ids = sample_particles(len(self.table), cfg.seed)
            images = fourier.to_fourier(mrc.read_images(self.table, ids, self.reader))
            origin = modules.recentre_origins(prelim.matrices[ids], prelim.origin_px[ids], centre)
            ctf = ctf_model.ctf_for_table(self.table, ids, box) if self.use_ctf else None
            references = np.zeros_like(images)
            for half, other in zip((1, 2), self._reference_halves(iteration, index)[::-1]):
                rows = np.nonzero(self.subset[ids] == half)[0]
                fvol = fourier.prepare_volume(modules.recentre(other * self.masks[index], centre), cfg.reconstruction.padding)
                references[rows] = fourier.project(fvol, prelim.matrices[ids[rows]], origin[rows], ctf=None if ctf is None else ctf[rows])
            frc, samples = band.fourier_ring_correlation(images, references, box)
            radius = band.signal_band(frc, samples, box)
            how = f"from the FRC of {len(ids)} images with the other half's projections of the module"
        self.results.set_attribute(stage, "search_band_px", radius)
        log.info("%s: search band %.1f px = %.2f Å (Nyquist %.2f Å), %s", stage, radius, box * self.voxel / radius, 2 * self.voxel, how)
        return radius

    def _reference_halves(self, iteration, index):
        """The half maps (consensus frame) of the reference the stage's module is searched against: the
        consensus halves in iteration 1, the module's half maps of the previous iteration after. Rank 0."""
        if iteration == 1:
            return self.consensus_halves
        folder = self.out / f"iteration_{iteration - 1:02d}" / self.cfg.modules[index].name
        return tuple(mrc.read_map(folder / f"half{h}.mrc")[0] for h in (1, 2))

    def _reconstruct_consensus_halves(self):
        """Half maps of the consensus poses (``OUT/consensus/half1.mrc``, ``half2.mrc``), every rank
        back-projecting its block; read back when a resumed run made them already. Rank 0 keeps them."""
        cfg, ctx = self.cfg, self.ctx
        folder = self.out / "consensus"
        done = ctx.bcast(ctx.is_root and self.results.root_flag("consensus_halves") and (folder / "half2.mrc").exists())
        self.consensus_halves = None
        if done:
            if ctx.is_root:
                self.consensus_halves = tuple(mrc.read_map(folder / f"half{h}.mrc")[0] for h in (1, 2))
            return
        block = np.array_split(np.arange(len(self.table)), ctx.size)[ctx.rank]
        halves = backproject_halves(self.table, block, self.box, use_ctf=self.use_ctf, padding=cfg.reconstruction.padding,
                                    subset=self.subset, reader=self.reader)
        for bp in halves:
            ctx.reduce_sum(bp.data)
            ctx.reduce_sum(bp.weight)
        if ctx.is_root:
            maps = maps_from_halves(halves, cfg.reconstruction.weight_floor, cfg.reconstruction.gridding_iterations)
            folder.mkdir(parents=True, exist_ok=True)
            for h in (1, 2):
                mrc.write_map(folder / f"half{h}.mrc", maps[f"half{h}"], self.voxel)
            self.results.set_root_flag("consensus_halves")
            self.consensus_halves = (maps["half1"], maps["half2"])
            log.info("consensus half maps (the consensus poses) in %s", folder)

    def _search_stage(self, stage, iteration, index, model, module_maps, poses):
        cfg, ctx = self.cfg, self.ctx
        module_mask = self.masks[index]
        own_centre = cfg.modules[index].centre_px  # the module's rotation centre: its centre of mass unless set
        centre = modules.centre_of_mass_px(model, module_mask) if own_centre is None else np.asarray(own_centre, dtype=np.float64)
        self.centres[index] = centre
        prelim = poses[index]
        unit_of_particle, done = None, None
        if ctx.is_root:
            # The checkpoint fixes the work units of a stage it holds (whatever the parallel settings now).
            planned, _ = partition.work_units(
                partition.projection_classes(prelim.matrices, np.deg2rad(cfg.parallel.class_spacing_deg)), cfg.parallel.unit_size
            )
            group = self.results.stage(stage, iteration=iteration, module=cfg.modules[index].name, unit_of_particle=planned)
            unit_of_particle, done = group["unit_of_particle"][...], self.results.done_units(stage)
        unit_of_particle, done = ctx.bcast((unit_of_particle, done))
        members = partition.members_of(unit_of_particle)
        pending = [u for u in range(len(members)) if not done[u]]
        if ctx.is_root:
            log.info("%s: %d particles in %d units (%d to do), module centre (%.2f, %.2f, %.2f) px",
                     stage, len(unit_of_particle), len(members), len(pending), *centre)
        if pending:
            module_volume = modules.recentre(model * module_mask, centre)
            band_px = ctx.bcast(self._search_band(stage, iteration, index, prelim, centre) if ctx.is_root else None)
            settings = search_settings(cfg, module_mask, centre, self.box, band_px, cfg.modules[index])
            held = []
            module_shared, module_fvol = self._shared_fvol(module_volume, band_px)
            held.append(module_shared)
            rest = []
            for volume, rest_poses in self._rest_components(index, model, module_maps, poses):
                shared, fvol = self._shared_fvol(volume, band_px)
                held.append(shared)
                rest.append((fvol, rest_poses))
            searcher = local.UnitSearch(module_fvol, self.directions, settings, self.box)
            seeds = particle_seeds(cfg.seed, iteration, index, len(self.table))
            process = lambda unit: self._process_unit(members[unit], searcher, prelim, centre, rest, seeds)  # noqa: E731
            tracker = ProgressLog(f"{stage}: search", sum(len(members[u]) for u in pending))
            cpu_started = time.process_time()

            def record(unit, result):  # rank 0
                self.results.write_unit(stage, unit, members[unit], result)
                tracker.add(len(members[unit]))

            finished = scheduler.run_units(ctx, pending, process, record if ctx.is_root else None)
            self._add_cpu(stage, "search", time.process_time() - cpu_started)
            for shared in held:
                shared.free()
            if not finished:
                return None
        final = None
        if ctx.is_root:
            final = self._final_poses(stage, centre)
            self.results.mark(stage, "complete")
        return ctx.bcast(final)

    def _final_poses(self, stage, centre) -> Poses:
        """The stage's poses from the search's, with the mean motion taken out (`search.mean_motion`); rank 0.
        Recomputed from the checkpoint on every run (deterministic), then written to ``results.h5``."""
        stored = self.results.read_stage(stage)
        matrices, origin_px = stored["search_matrix"], stored["search_origin_px"]
        rotation_deg, shift_px = np.zeros(3), np.zeros(3)
        if self.cfg.search.mean_motion == "remove":
            reference = self.consensus_poses
            matrices, origin_px, motion = modules.remove_mean_motion(matrices, origin_px, reference.matrices, reference.origin_px, centre)
            rotation_deg, shift_px = np.rad2deg(rotations.rotation_vector(motion.rotation)), motion.shift_px
            log.info("%s: mean motion relative to the consensus taken out: %.3f° rotation, %.3f px shift",
                     stage, np.rad2deg(motion.angle_rad), np.linalg.norm(shift_px))
        self.results.write_poses(stage, matrices, origin_px, rotation_deg, shift_px)
        return Poses(matrices, origin_px)

    def _ctf(self, ids):
        if not self.use_ctf:
            return None
        return lambda rows, extra: ctf_model.ctf_for_table(self.table, ids[rows], self.box, extra)

    def _process_unit(self, ids, searcher, prelim, centre, rest, seeds) -> dict:
        images_ft = fourier.to_fourier(mrc.read_images(self.table, ids, self.reader))
        ctf = self._ctf(ids)
        rest_ft = None
        if rest:
            ctf_all = None if ctf is None else ctf(np.arange(len(ids)), 0.0)
            rest_ft = sum(fourier.project(fvol, p.matrices[ids], p.origin_px[ids], ctf=ctf_all) for fvol, p in rest)
        origin_centred = modules.recentre_origins(prelim.matrices[ids], prelim.origin_px[ids], centre)
        consensus = self.consensus_poses  # the centre of the prior: the module's motion is relative to the consensus
        unit = local.UnitInput(images_ft, prelim.matrices[ids], origin_centred, ctf, rest_ft, seeds[ids], consensus.matrices[ids],
                               modules.recentre_origins(consensus.matrices[ids], consensus.origin_px[ids], centre))
        found = searcher.run(unit)
        return {
            "search_matrix": found.matrix,
            "search_origin_px": modules.consensus_origins(found.matrix, found.origin_px, centre),
            "score": found.score,
            "rest_scale": found.rest_scale,
        }

    # -- one stage: reconstruction -------------------------------------------------------------
    def _reconstruct_stage(self, stage, iteration, index, refined: Poses):
        cfg, ctx = self.cfg, self.ctx
        module = cfg.modules[index]
        module_mask = self.masks[index]
        # The module is rebuilt in its recentred frame (sharper: the centre tolerates angular error best),
        # then moved back to overlay the consensus map.
        centre = self.centres[index]
        origin_centred = modules.recentre_origins(refined.matrices, refined.origin_px, centre)
        cpu_started = time.process_time()
        block = np.array_split(np.arange(len(self.table)), ctx.size)[ctx.rank]
        tracker = ProgressLog(f"{stage}: back-projection (rank 0's block)", len(block)) if ctx.is_root else None
        halves = backproject_halves(
            self.table, block, self.box, use_ctf=self.use_ctf, padding=cfg.reconstruction.padding, subset=self.subset,
            matrices=refined.matrices, origin_px=origin_centred, reader=self.reader,
            progress=(lambda done, total: tracker.add(done - tracker.done)) if tracker else None,
        )
        for bp in halves:
            ctx.reduce_sum(bp.data)
            ctx.reduce_sum(bp.weight)
        result = None
        if ctx.is_root:
            result = self._write_module(stage, module, module_mask, centre, halves, refined, iteration, cpu_started)
        else:
            self._add_cpu(stage, "reconstruction", time.process_time() - cpu_started)
        self._record_cpu(stage)
        return ctx.bcast(result)

    def _add_cpu(self, stage, part, seconds):
        self.cpu_seconds.setdefault(stage, {}).setdefault(part, 0.0)
        self.cpu_seconds[stage][part] += seconds

    def _record_cpu(self, stage):
        """The stage's CPU seconds per part (search, reconstruction, writing), summed over ranks: logged by rank 0
        and kept in ``results.h5`` (attribute ``cpu_seconds`` of the stage, JSON)."""
        parts = ("search", "reconstruction", "writing")
        mine = self.cpu_seconds.get(stage, {})
        total = np.array([mine.get(part, 0.0) for part in parts])
        self.ctx.reduce_sum(total)
        if self.ctx.is_root:
            record = dict(zip(parts, total.tolist()))
            self.results.set_attribute(stage, "cpu_seconds", json.dumps(record))
            log.info("%s: CPU time (all ranks) search %.1f s, reconstruction %.1f s, writing %.1f s", stage, *total)

    def _write_module(self, stage, module, module_mask, centre, halves, refined, iteration, cpu_started):
        cfg = self.cfg
        rebuilt = maps_from_halves(halves, cfg.reconstruction.weight_floor, cfg.reconstruction.gridding_iterations)
        maps = {k: modules.shift_volume(v, centre) for k, v in rebuilt.items()}
        writing_started = time.process_time()
        self._add_cpu(stage, "reconstruction", writing_started - cpu_started)
        half_maps, full = [maps["half1"], maps["half2"]], maps["full"]
        folder = self.out / (module.name if iteration == cfg.iterations else f"iteration_{iteration:02d}/{module.name}")
        folder.mkdir(parents=True, exist_ok=True)
        mrc.write_map(folder / "half1.mrc", half_maps[0], self.voxel)
        mrc.write_map(folder / "half2.mrc", half_maps[1], self.voxel)
        mrc.write_map(folder / "map.mrc", full * module_mask, self.voxel)
        mrc.write_map(folder / "mask.mrc", module_mask, self.voxel)
        curve = fsc_mod.fsc(half_maps[0], half_maps[1], self.voxel, mask=module_mask, seed=cfg.seed)
        fsc_mod.write_fsc_json(folder / "fsc.json", {"half_maps_masked": curve})
        fsc_mod.plot_fsc_png(folder / "fsc.png", {f"{module.name} half maps (masked)": curve}, f"{stage}: gold-standard FSC")
        rot, tilt, psi = rotations.matrix_to_euler(refined.matrices)
        stored = self.results.read_stage(stage)
        write_star(
            folder / "particles.star", self.table, rot_rad=rot, tilt_rad=tilt, psi_rad=psi, origin_px=refined.origin_px,
            image_name=relative_image_names(self.table, cfg.project_dir), extra_columns={"rlnLorefineScore": stored["score"]},
        )
        self.results.mark(stage, "reconstructed")
        log.info("%s: map %s, half-map FSC 0.143 at %.2f Å (masked)", stage, folder / "map.mrc", fsc_mod.resolution_at(curve, 0.143))
        self._add_cpu(stage, "writing", time.process_time() - writing_started)
        return full

    def _combine(self, model, maps, iteration):
        """The updated model: each refined module inside its mask, the old model elsewhere."""
        total_mask = np.clip(sum(self.masks), 0.0, 1.0)
        combined = sum(m * mask for m, mask in zip(maps, self.masks)) + model * (1.0 - total_mask)
        combined = combined.astype(np.float32)
        if self.ctx.is_root:
            name = "combined.mrc" if iteration == self.cfg.iterations else f"iteration_{iteration:02d}/combined.mrc"
            (self.out / name).parent.mkdir(parents=True, exist_ok=True)
            mrc.write_map(self.out / name, combined, self.voxel)
        return combined
