"""`refine`: LO-refinement of every module of a complex, the whole algorithm in one place (SPEC §3).

    for each iteration:
        for each module m (Gauss–Seidel: the modules refined earlier in this iteration enter with their new maps):
            split and recentre      module map V·M_m, its centre of mass at the box centre; the rest of the complex
            band                    the Fourier band the score uses (where the data still match the module)
            prior                   the width of the module's motion, learned from a sample of particles
            search                  every particle's local search of the module's pose (work units)
            mean motion             the module's mean rigid motion relative to the consensus taken out
            reconstruct             the module's half maps from its refined poses, placed back in the consensus frame
        combine                     the refined modules into the model of the next iteration
    finish                          post-processing, local resolution, the modules' motion, the report

Written once for one process and for many: the `refine.distributor.Distributor` it is handed does every step that
involves other processes (broadcasts, sums, the hand-out of work units, shared memory), and the
`refine.recorder.Recorder` keeps the checkpoint, the lock and the CPU time, so a resumed run picks up where the
last one stopped. The computations themselves are `refine.engine.RefineEngine`'s.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.results import stage_name
from lorefine_mpi.kernels import use_backend
from lorefine_mpi.process_memory import release_freed_memory
from lorefine_mpi.reconstruction.reconstruct import distributed_half_maps
from lorefine_mpi.refine import engine as eng
from lorefine_mpi.refine import partition
from lorefine_mpi.refine.progress import ProgressLog
from lorefine_mpi.search import options, prior

log = logging.getLogger(__name__)


def refine(cfg, dist, recorder, write_report=None) -> int:
    """LO-refinement of ``cfg`` (module docstring): 0, or `errors.EXIT_STOPPED` when a stop was asked (finished work
    recorded). Collective: every process calls it. write_report(output folder) -> path: the report of the finished run
    (`report.html.write_report`, given by the caller; the report sits above this package), written on rank 0 after the
    post-processing."""
    with recorder.running():
        return _refine(cfg, dist, recorder, write_report)


def _refine(cfg, dist, recorder, write_report) -> int:
    started = time.time()
    use_backend(cfg.compute.backend)
    engine = eng.RefineEngine(cfg, allocate=dist.allocate)
    run = _Run(cfg, dist, recorder, engine)
    if (options.is_auto(cfg.search.max_resolution_angstrom) or cfg.consensus_half_maps) and not run.consensus_halves():
        return recorder.stopped()
    model = engine.consensus
    poses = [engine.consensus_poses for _ in cfg.modules]
    centres = [None for _ in cfg.modules]  # each module's rotation centre in its last stage (xyz px from the box centre)
    known = recorder.final_iteration()  # iterations: auto, resumed after its poses settled
    if known is not None:
        engine.folder.iterations = known
    iteration, settled = 0, None
    while settled is None:
        iteration += 1
        maps, previous = [], list(poses)
        for index, module in enumerate(cfg.modules):
            stage = eng.Stage(stage_name(iteration, module.name), iteration, index, module.name)
            state = engine.begin_stage(stage, model, gauss_seidel(model, maps, len(cfg.modules)), poses)
            centres[index] = state.centre_px
            refined = run.search(state)
            if refined is None:
                return recorder.stopped()
            poses[index] = refined
            full = run.reconstruct(state, refined)
            if full is None:
                return recorder.stopped()
            maps.append(full)
        model = engine.combine(model, maps)
        if dist.is_root:
            recorder.writing()
            engine.write_combined(iteration, model)
        settled = run.settled(iteration, previous, poses)
    if not isinstance(cfg.iterations, int):  # the last iteration's outputs move to the top of the folder
        recorder.record_final_iteration(iteration, settled)
        if dist.is_root:
            engine.folder.promote(iteration, [m.name for m in cfg.modules])
        engine.folder.iterations = iteration
    if dist.is_root:
        log.info("done: outputs in %s", cfg.output)
    recorder.close_results()  # the end-of-run analysis adds to it (`io.results.write_motion`)
    recorder.writing()
    if cfg.postprocess.enabled:  # post-processing, local resolution, motion, report, table
        from lorefine_mpi.refine.finish import finish_run

        finish_run(cfg, dist, folder=engine.folder, source=engine.source, consensus_poses=engine.consensus_poses, poses=poses,
                   centres_px=centres, masks=engine.masks, voxel_size_angstrom=engine.voxel, subset=engine.subset, started=started,
                   write_report=write_report)
    if dist.is_root and cfg.subtracted.modules:  # `subtracted:` in the config
        from lorefine_mpi.refine.subtracted import write_subtracted

        for name in cfg.subtracted.modules:
            write_subtracted(cfg.output, name, box_px=cfg.subtracted.box_px)
    return 0


def median_pose_change(before: eng.Poses, after: eng.Poses) -> tuple[float, float]:
    """(median angle deg, median origin change px) between two sets of poses of the same particles."""
    angle = np.rad2deg(rotations.geodesic_angle(before.matrices, after.matrices))
    return float(np.median(angle)), float(np.median(np.linalg.norm(after.origin_px - before.origin_px, axis=1)))


def gauss_seidel(model, refined_maps, n_modules: int) -> list:
    """Each module's map for the rest of the complex in a stage: the modules refined already in this iteration with
    their new maps, the others with the iteration's model (their poses: the latest, the caller's)."""
    return list(refined_maps) + [model] * (n_modules - len(refined_maps))


def replay_stage(cfg, engine, iteration: int, index: int, folder=None):
    """The `engine.StageState` a run of ``cfg`` set up for module ``index`` (0-based) of ``iteration``, read back from
    its output folder (``folder``, default ``cfg.output``): the previous iteration's combined map and poses, and the
    maps and poses of the modules refined before it in this iteration (for studies of a finished run)."""
    from lorefine_mpi.io import mrc, results
    from lorefine_mpi.refine import layout

    run = layout.RunFolder.of(cfg, folder)
    names = [m.name for m in cfg.modules]

    def final(it, name):
        stored = results.read_final_stage(run.results, stage_name(it, name))
        return eng.Poses(stored["matrix"], stored["origin_px"])

    model = engine.consensus if iteration == 1 else mrc.read_map(run.combined(iteration - 1))[0]
    poses = [engine.consensus_poses if iteration == 1 else final(iteration - 1, n) for n in names]
    def full(name):  # the module's full map as the run kept it: the mean of its half maps (unmasked)
        folder = run.module_folder(name, iteration)
        return 0.5 * (mrc.read_map(folder.half(1))[0] + mrc.read_map(folder.half(2))[0])

    refined = [full(n) for n in names[:index]]
    poses[:index] = [final(iteration, n) for n in names[:index]]
    stage = eng.Stage(stage_name(iteration, names[index]), iteration, index, names[index])
    return engine.begin_stage(stage, model, gauss_seidel(model, refined, len(names)), poses)


class _Run:
    """The steps of one run that involve the distributor and the recorder (`refine` reads as the algorithm)."""

    def __init__(self, cfg, dist, recorder, engine):
        self.cfg, self.dist, self.recorder, self.engine = cfg, dist, recorder, engine
        self.exact = None

    # -- the consensus poses' half maps -------------------------------------------------------
    def consensus_halves(self) -> bool:
        """Half maps of the consensus poses (``OUT/consensus/``), for the first iteration's search bands: the
        ones given (``consensus_half_maps``) or reconstructed; kept only in ``OUT/consensus/`` (rank 0 reads them for
        each band: `RefineEngine.reference_halves`). False when a stop was asked."""
        dist, engine, recorder = self.dist, self.engine, self.recorder
        if dist.on_root(lambda: recorder.has_flag("consensus_halves") and engine.has_consensus_halves()):
            return True
        if self.cfg.consensus_half_maps:  # the consensus's own (RELION's Refine3D), nothing to reconstruct
            if dist.is_root:
                recorder.writing()
                engine.given_consensus_halves()
            recorder.set_flag("consensus_halves")
            return True
        half_maps = self.half_maps(engine.consensus_poses, "consensus half maps")
        if half_maps is False:
            return False
        if dist.is_root:
            recorder.writing()
            engine.write_consensus_halves(half_maps)
        del half_maps
        recorder.set_flag("consensus_halves")
        return True

    # -- iterations -----------------------------------------------------------------------------
    def settled(self, iteration: int, previous, poses) -> str | None:
        """Why the run ends after ``iteration``, or None to go on: ``iterations: N`` ends after N; ``auto`` once every
        module's median pose change from the last iteration (``previous``; the consensus poses before the first) is below
        ``convergence.step_fraction`` of its angular step and of the shift step, or after ``convergence.max_iterations``.
        The changes are logged. The same on every rank (the poses are)."""
        cfg = self.cfg
        changes = [median_pose_change(before, after) for before, after in zip(previous, poses)]
        limits = [(cfg.convergence.step_fraction * m.search(cfg.search).angular_step_deg, cfg.convergence.step_fraction * cfg.search.shift_step_px)
                  for m in cfg.modules]
        if self.dist.is_root:
            log.info("iteration %d: median pose change %s", iteration, ", ".join(
                f"{m.name} {a:.2f}° / {s:.2f} px" for m, (a, s) in zip(cfg.modules, changes)))
        if isinstance(cfg.iterations, int):
            return f"{cfg.iterations} iterations as configured" if iteration >= cfg.iterations else None
        if iteration >= 2 and all(a < la and s < ls for (a, s), (la, ls) in zip(changes, limits)):
            why = (f"the poses settled: every module's median change below {cfg.convergence.step_fraction:g} of its angular and "
                   f"shift steps")
        elif iteration >= cfg.convergence.max_iterations:
            why = f"convergence.max_iterations ({cfg.convergence.max_iterations}) reached"
        else:
            return None
        if self.dist.is_root:
            log.info("iteration %d is the last: %s", iteration, why)
        return why

    # -- one stage: search --------------------------------------------------------------------
    def search(self, state) -> eng.Poses | None:
        """The stage's final poses (every rank), or None when a stop was asked: the work units the checkpoint does
        not hold are searched (band, prior, then the units), then the mean motion is taken out."""
        dist, engine, recorder, stage = self.dist, self.engine, self.recorder, state.stage
        unit_of_particle, done = recorder.work_units(stage, lambda: engine.work_units(state.prelim), eng.max_poses(self.cfg))
        members = partition.members_of(unit_of_particle)
        pending = [u for u in range(len(members)) if not done[u]]
        if dist.is_root:
            log.info("%s: %d particles in %d units (%d to do), module centre (%.2f, %.2f, %.2f) px",
                     stage.name, len(unit_of_particle), len(members), len(pending), *state.centre_px)
        if pending:
            release_freed_memory()  # what the stages before freed: the band's sample is laid out afresh (process_memory)
            band_px, weights = dist.on_root(lambda: self._band(state))
            release_freed_memory()  # the band's sample and its padded spectra, before the search's references
            search = engine.stage_search(state, band_px, weights)
            search.use_prior(*self.prior_widths(stage, search))
            release_freed_memory()  # the prior pilot's score cubes, before the units'
            progress = ProgressLog(f"{stage.name}: search", sum(len(members[u]) for u in pending))
            with recorder.cpu_clock(stage, "search"):
                finished = dist.run_units(pending, lambda unit: search.search_unit(members[unit]), recorder.unit_writer(stage, members, progress))
            dist.free_all()
            release_freed_memory()  # the search's arrays, before the reconstruction's (process_memory)
            if not finished:
                return None
        return dist.on_root(lambda: self._final_poses(state))

    def _band(self, state):
        """Rank 0: the stage's search band and whitening weights (`RefineEngine.search_band`), recorded."""
        engine, stage = self.engine, state.stage
        band_px, weights, how = engine.search_band(state, engine.reference_halves(state))
        self.recorder.set_stage_attribute(stage, "search_band_px", band_px)
        log.info("%s: search band %.1f px = %.2f Å (Nyquist %.2f Å), %s", stage.name, band_px, engine.box * engine.voxel / band_px,
                 2 * engine.voxel, how)
        return band_px, weights

    def prior_widths(self, stage, search):
        """The stage's prior (σ_rot rad, σ_px, rotation shape (3, 3) or None), on every rank: learned once
        (`engine.PriorPilot`, its units shared among the ranks; each particle's evidence is computed by one rank, so
        the sums over ranks are exact and the prior the same on any rank count): the widths that maximise the sample's
        evidence, then, for the rotation, the shape of its posterior second moment when that gains evidence (an
        anisotropic prior: a hinge); kept in results.h5, so a resumed stage uses the same."""
        dist, recorder = self.dist, self.recorder
        kept = recorder.stage_attribute(stage, "prior_sigma")
        if kept is not None:
            return (*(None if np.isnan(v) else float(v) for v in kept), recorder.stage_attribute(stage, "prior_rotation_shape"))
        pilot = search.prior_pilot()
        if pilot is None:
            return search.configured_prior()
        mine = range(dist.rank, len(pilot.units), dist.size)
        with recorder.cpu_clock(stage, "search"):
            evidence = pilot.evidence(mine, pilot.empty())
            dist.reduce_sum(evidence)
            rot, px = dist.on_root(lambda: pilot.widths(evidence))
            shape, gain = None, None
            if pilot.learns_shape:
                shift_width = pilot.grid_px[0] if px is None else px  # a flat shift prior: its wide stand-in
                moments = pilot.moments(rot, shift_width, np.zeros((len(pilot.ids), 3, 3)))
                dist.reduce_sum(moments)
                candidate = dist.on_root(lambda: prior.rotation_shape(moments))
                if candidate is not None:
                    shaped = pilot.shaped_evidence(candidate, shift_width, np.zeros((len(pilot.ids), len(pilot.grid_rot))))
                    dist.reduce_sum(shaped)
                    shaped_rot, shape, gain = dist.on_root(lambda: pilot.shaped_widths(evidence, shaped, candidate))
                    rot = shaped_rot if shape is not None else rot
        if dist.is_root:
            self._record_prior(stage, pilot, rot, px, shape, gain)
        return rot, px, shape

    def _record_prior(self, stage, pilot, rot, px, shape, gain) -> None:
        self.recorder.set_stage_attribute(stage, "prior_sigma", np.array([np.nan if rot is None else rot, np.nan if px is None else px]))
        if shape is not None:
            self.recorder.set_stage_attribute(stage, "prior_rotation_shape", shape)
        described = "flat" if rot is None else f"σ {np.rad2deg(rot):.3g}°"
        if shape is not None:
            values, vectors = np.linalg.eigh(shape)
            axis = vectors[:, -1]
            described += (f", anisotropic: σ {', '.join(f'{np.rad2deg(rot * np.sqrt(v)):.3g}' for v in values[::-1])}° about its "
                          f"axes, the widest ({axis[0]:.2f}, {axis[1]:.2f}, {axis[2]:.2f}) (evidence +{gain:.1f} nats)")
        elif gain is not None:
            described += (f" (isotropic: the best anisotropic prior gains {gain:.1f} nats; one is kept above {prior.SHAPE_EVIDENCE_NATS:g} "
                          f"nats with an axis {prior.SHAPE_MIN_RATIO:g}x wider in variance)")
        log.info("%s: prior on the module's motion: %s rotation, %s shift (learned from %d particles)", stage.name, described,
                 "flat" if px is None else f"σ {px:.3g} px", len(pilot.ids))

    def _final_poses(self, state) -> eng.Poses:
        """Rank 0: the stage's poses from the search's recorded ones, the mean motion taken out; recorded."""
        stage, recorder = state.stage, self.recorder
        stored = recorder.read_stage(stage)
        undetermined = int(np.isnan(stored["rest_scale"]).sum())
        if undetermined:
            log.warning("%s: the rest's scale k could not be fitted for %d particle(s) (their module and rest projections are "
                        "alike): their rest was not subtracted (rest_scale NaN in results.h5)", stage.name, undetermined)
        final, rotation_deg, shift_px = self.engine.final_poses(state, stored)
        recorder.write_poses(stage, final, rotation_deg, shift_px)
        return final

    # -- one stage: reconstruction -------------------------------------------------------------
    def reconstruct(self, state, refined):
        """The module's full map (every rank) from its refined poses, its outputs written; None when a stop was asked."""
        dist, engine, recorder, stage = self.dist, self.engine, self.recorder, state.stage
        cpu_started = time.process_time()
        half_maps = self.half_maps(engine.reconstruction_poses(state, refined), stage.name)
        if half_maps is False:
            return None
        full = None
        if dist.is_root:
            maps = engine.rebuild(state, half_maps)
            writing_started = time.process_time()
            recorder.add_cpu(stage, "reconstruction", writing_started - cpu_started)
            stored = recorder.read_stage(stage)
            recorder.writing()
            engine.write_module(state, maps, refined, stored)
            recorder.mark_reconstructed(stage)
            recorder.add_cpu(stage, "writing", time.process_time() - writing_started)
            full = maps["full"]
        else:
            recorder.add_cpu(stage, "reconstruction", time.process_time() - cpu_started)
        recorder.record_cpu(stage)
        return dist.bcast(full)

    def half_maps(self, poses: eng.Poses, what: str):
        """The half maps (consensus frame of the poses) of every particle at ``poses``: each process back-projects its
        share of the fixed particle blocks of its half into its one accumulator, the accumulators are summed exactly
        and each half reconstructed on its own rank (`distributed_half_maps`); (half1, half2) on rank 0, None on the
        others, or False on every rank when a stop was asked."""
        dist, engine = self.dist, self.engine

        def backproject(half, accumulator):
            mine = self._my_particles(half)
            progress = ProgressLog(f"{what}: back-projection of half {half} (rank 0's blocks)", len(mine)) if dist.is_root else None
            # the order of the additions does not matter (exact sums): batches as large as the reader's, for the
            # scatter's locality (its tiles fill better with more images per call)
            for ids in np.array_split(mine, max(1, -(-len(mine) // eng.image_batch(engine.box)))):
                if dist.stop_requested:
                    break
                engine.backproject(poses, ids, accumulator)
                if progress:
                    progress.add(len(ids))

        reconstruction = self.cfg.reconstruction
        exact = self._exact_sum()
        return distributed_half_maps(dist, lambda: engine.accumulator(exact), backproject, reconstruction.weight_floor,
                                     reconstruction.gridding_iterations)

    def _exact_sum(self) -> eng.ExactSum:
        """The rounding grid of the accumulators, from bounds over every particle (once per run)."""
        if self.exact is None:
            image_bound, ctf_bound = self.engine.image_bounds(self._my_particles())
            image_bound, ctf_bound = self.dist.allreduce_max(np.array([image_bound, ctf_bound]))
            self.exact = self.engine.exact_sum(image_bound, ctf_bound)
        return self.exact

    def _my_particles(self, half: int | None = None) -> np.ndarray:
        """This process's consecutive share of the fixed particle blocks (`engine.reconstruction_blocks`), ascending: among
        all ranks, or with ``half``, among the ranks of that half map (`Distributor.half_share`), its particles only."""
        blocks = eng.reconstruction_blocks(self.engine.n)
        share = self.dist.share(len(blocks)) if half is None else self.dist.half_share(len(blocks))
        mine = np.concatenate([blocks[b] for b in share] or [np.zeros(0, np.int64)])
        return mine if half is None else mine[self.engine.subset[mine] == half]
