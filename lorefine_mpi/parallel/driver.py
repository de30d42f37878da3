"""The driver of `lorefine refine`: runs the stages of `refine.engine` on one process or many MPI ranks.

What it owns (the engine owns none of it):
    - the checkpoint: rank 0 opens ``results.h5`` (`io.results`), writes every finished work unit into it
      as it arrives, and on a resume hands out only the units it does not hold;
    - the search's leader/worker protocol (`scheduler`): rank 0 hands out work units on request and
      searches too;
    - the collectives: the stage's work units and final poses are broadcast from rank 0; each rank
      back-projects its share of the fixed particle blocks, each half's accumulators are summed (exactly: see
      `engine.ExactSum`) on the rank that reconstructs it (ranks 0 and 1), rank 0 gets both half maps and
      writes the module's outputs; the module map is broadcast;
      so are the consensus poses' half maps (``search.max_resolution_angstrom: auto``) and each stage's
      search band, found by rank 0;
    - the CPU time of each stage's search, reconstruction and writing, summed over ranks (results.h5);
    - node-shared reference volumes (`shared.SharedArena`), freed after each stage's search;
    - the output folder's lock (`io.runlock`, taken by rank 0 after the validation that `lorefine check`
      shares, `config.check.check_run`; the folder is looked at again under the lock), checked before
      every write, refreshed by rank 0's watchdog, released at the end;
    - stall detection (`watchdog`): a rank silent for ``parallel.stall_timeout_s`` (or the environment's
      ``LOREFINE_STALL_TIMEOUT_S``) ends the job with one line naming it;
    - stop requests (SIGTERM, SIGUSR1, SIGINT on any rank, `context`): units in flight finish and are
      recorded (in the reconstruction, the blocks in hand), then every rank returns `EXIT_STOPPED` with
      the resume line printed once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from lorefine_mpi import __version__
from lorefine_mpi.config import dump_config, search_fingerprint
from lorefine_mpi.config.check import check_output, check_run
from lorefine_mpi.errors import EXIT_STOPPED, InputError
from lorefine_mpi.io.results import ResultsFile
from lorefine_mpi.io.runlock import RunLock
from lorefine_mpi.io.star import atomic_write_text, read_star
from lorefine_mpi.parallel import partition, scheduler
from lorefine_mpi.parallel.shared import SharedArena
from lorefine_mpi.parallel.watchdog import Watchdog
from lorefine_mpi.reconstruction.reconstruct import summed_half_maps
from lorefine_mpi.refine import engine as eng
from lorefine_mpi.refine import layout
from lorefine_mpi.refine.progress import ProgressLog

log = logging.getLogger(__name__)

STALL_TIMEOUT_VARIABLE = "LOREFINE_STALL_TIMEOUT_S"


def stall_timeout_s(cfg, quiet: bool = False) -> float:
    """``LOREFINE_STALL_TIMEOUT_S`` when set (a site's or a test's choice), else ``parallel.stall_timeout_s``.
    Every rank reads the same environment, so a bad value is an error of every rank (printed unless quiet)."""
    text = os.environ.get(STALL_TIMEOUT_VARIABLE)
    if text is None:
        return cfg.parallel.stall_timeout_s
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 86400:
        raise InputError(f"{STALL_TIMEOUT_VARIABLE}: expected seconds in [1, 86400], got {text!r}", quiet=quiet, collective=True)
    return value


def resume_line(cfg) -> str:
    return f"lorefine refine {cfg.source} --continue"


class Driver:
    def __init__(self, cfg, ctx, *, command_line: str, resume: bool):
        self.cfg, self.ctx, self.resume = cfg, ctx, resume
        self.command_line = command_line
        self.timeout_s = stall_timeout_s(cfg, quiet=not ctx.is_root)
        self.results = None
        self.lock = None
        self.exact = None
        self.consensus_halves = None
        self.cpu_seconds = {}  # stage -> part -> CPU seconds of this rank
        self.watchdog = None
        self.log_file = None

    def stalled_line(self, rank: int, seconds: float) -> str:
        return (f"lorefine: rank {rank}/{self.ctx.size} sent nothing for {seconds:g} s (stopped, dead or hung), so the job ends; "
                f"finished work is saved, resume with: {resume_line(self.cfg)}")

    # -- set-up ---------------------------------------------------------------------------------
    def _open_output(self):
        """Rank 0: the validation `lorefine check` does, the folder's lock, results.h5, the resolved config, the log."""
        cfg = self.cfg
        summary = check_run(cfg, self.resume, lock_in_use=False)
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock.acquire(out, self.timeout_s, command=self.command_line)
        self.watchdog.lock = self.lock
        check_output(cfg, self.resume, summary.input_files, lock_in_use=False)  # again: the folder may have changed meanwhile
        self.results = ResultsFile(
            out / layout.RESULTS,
            image_names=read_star(cfg.particles, cfg.project_dir).image_name,
            config_yaml=dump_config(cfg),
            fingerprint=search_fingerprint(cfg),
            command_line=self.command_line,
            version=__version__,
            resume=self.resume,
        )
        config = out / layout.CONFIG
        if not (config.exists() and config.read_text() == dump_config(cfg)):
            atomic_write_text(config, dump_config(cfg))
        self.log_file = logging.FileHandler(out / layout.LOG)  # appends: a resumed run's log follows the first's
        self.log_file.setFormatter(self.ctx.log_formatter())
        logging.getLogger().addHandler(self.log_file)

    def _writing(self) -> None:
        """Before rank 0 writes: this run must still hold the folder's lock."""
        self.lock.verify()

    def run(self) -> int:
        try:
            with Watchdog(self.ctx, self.timeout_s, self.stalled_line) as self.watchdog:
                try:
                    code = self._run()
                    self.ctx.barrier()  # every rank is done before the watchdogs stop
                    return code
                finally:
                    if self.results is not None:
                        self.results.close()
                    if self.log_file is not None:
                        logging.getLogger().removeHandler(self.log_file)
                        self.log_file.close()
        finally:  # the watchdog thread, which refreshes the lock, has stopped
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> int:
        ctx, cfg = self.ctx, self.cfg
        started = time.time()
        error = None
        if ctx.is_root:
            try:
                self._open_output()
            except InputError as e:
                error = e
        ctx.agree_on_error(error)
        arena = SharedArena(ctx)
        self.engine = engine = eng.RefineEngine(cfg, allocate=arena.allocate)
        if (cfg.search.max_resolution_angstrom == "auto" or cfg.consensus_half_maps) and not self._consensus_halves():
            return self._stopped()
        model = engine.consensus
        poses = [engine.consensus_poses for _ in cfg.modules]
        maps = []
        for stage in eng.stages(cfg):
            if stage.index == 0:
                maps = []
            # Gauss-Seidel: the modules refined already in this iteration enter the rest with their new maps.
            module_maps = maps + [model] * (len(cfg.modules) - len(maps))
            state = engine.begin_stage(stage, model, module_maps, poses)
            refined = self._search_stage(state, arena)
            if refined is None:
                return self._stopped()
            poses[stage.index] = refined
            full = self._reconstruct_stage(state, refined)
            if full is None:
                return self._stopped()
            maps.append(full)
            if stage.index == len(cfg.modules) - 1:
                model = engine.combine(model, maps)
                if ctx.is_root:
                    self._writing()
                    engine.write_combined(stage.iteration, model)
        if ctx.is_root:
            log.info("done: outputs in %s", cfg.output)
            self.results.close()  # the end-of-run analysis adds to it (`io.results.write_motion`)
            self.results = None
            self._writing()
        if cfg.postprocess.enabled:  # post-processing, local resolution, motion, report, table
            from lorefine_mpi.report.finish import finish_run

            finish_run(cfg, ctx, table=engine.table, consensus_poses=engine.consensus_poses, poses=poses, masks=engine.masks,
                       voxel_size_angstrom=engine.voxel, subset=engine.subset, use_ctf=engine.use_ctf, started=started)
        if ctx.is_root and cfg.subtracted.modules:  # `subtracted:` in the config
            from lorefine_mpi.refine.subtracted import write_subtracted

            for name in cfg.subtracted.modules:
                write_subtracted(cfg.output, name, box_px=cfg.subtracted.box_px)
        return 0

    def _stopped(self) -> int:
        if self.ctx.is_root:
            cfg = self.cfg
            log.warning("stopped on request with finished work saved in %s; resume with: %s", Path(cfg.output) / layout.RESULTS, resume_line(cfg))
            sys.stderr.write(f"lorefine: stopped; finished work is saved. Resume with: {resume_line(cfg)}\n")
        return EXIT_STOPPED

    # -- one stage: search --------------------------------------------------------------------
    def _search_stage(self, state, arena):
        ctx, stage, engine = self.ctx, state.stage, self.engine
        unit_of_particle, done = None, None
        if ctx.is_root:
            # The checkpoint fixes the work units of a stage it holds (whatever the parallel settings now).
            group = self.results.stage(stage.name, iteration=stage.iteration, module=stage.module_name,
                                       unit_of_particle=engine.work_units(state.prelim))
            unit_of_particle, done = group["unit_of_particle"][...], self.results.done_units(stage.name)
        unit_of_particle, done = ctx.bcast((unit_of_particle, done))
        members = partition.members_of(unit_of_particle)
        pending = [u for u in range(len(members)) if not done[u]]
        if ctx.is_root:
            log.info("%s: %d particles in %d units (%d to do), module centre (%.2f, %.2f, %.2f) px",
                     stage.name, len(unit_of_particle), len(members), len(pending), *state.centre_px)
        if pending:
            band_px = weights = None
            if ctx.is_root:
                band_px, weights, how = engine.search_band(state, engine.reference_halves(state, self.consensus_halves))
                self._writing()
                self.results.set_attribute(stage.name, "search_band_px", band_px)
                log.info("%s: search band %.1f px = %.2f Å (Nyquist %.2f Å), %s", stage.name, band_px, engine.box * engine.voxel / band_px,
                         2 * engine.voxel, how)
            band_px, weights = ctx.bcast((band_px, weights))
            search = engine.stage_search(state, band_px, weights)
            search.use_prior(*self._prior_widths(stage, search))
            tracker = ProgressLog(f"{stage.name}: search", sum(len(members[u]) for u in pending))
            cpu_started = time.process_time()

            def record(unit, result):  # rank 0
                self._writing()
                self.results.write_unit(stage.name, unit, members[unit], result)
                tracker.add(len(members[unit]))

            finished = scheduler.run_units(ctx, pending, lambda unit: search.search_unit(members[unit]), record if ctx.is_root else None)
            self._add_cpu(stage.name, "search", time.process_time() - cpu_started)
            arena.free_all()
            if not finished:
                return None
        final = None
        if ctx.is_root:
            stored = self.results.read_stage(stage.name)
            undetermined = int(np.isnan(stored["rest_scale"]).sum())
            if undetermined:
                log.warning("%s: the rest's scale k could not be fitted for %d particle(s) (their module and rest projections are "
                            "alike): their rest was not subtracted (rest_scale NaN in results.h5)", stage.name, undetermined)
            final, rotation_deg, shift_px = engine.final_poses(state, stored["search_matrix"], stored["search_origin_px"])
            self._writing()
            self.results.write_poses(stage.name, final.matrices, final.origin_px, rotation_deg, shift_px)
            self.results.mark(stage.name, "complete")
        return ctx.bcast(final)

    def _prior_widths(self, stage, search):
        """The stage's prior widths (σ_rot rad, σ_px), on every rank: learned once (`engine.PriorPilot`, its
        units shared among the ranks; each particle's evidence is computed by one rank, so the sum over ranks
        is exact and the widths the same on any rank count) and kept in results.h5, so a resumed stage uses
        the same. Collective."""
        ctx = self.ctx
        kept = self.results.stage_attribute(stage.name, "prior_sigma") if ctx.is_root else None
        kept = ctx.bcast(kept)
        if kept is not None:
            return tuple(None if np.isnan(v) else float(v) for v in kept)
        pilot = search.prior_pilot()
        if pilot is None:
            return search.configured_prior()
        cpu_started = time.process_time()
        evidence = pilot.evidence(range(ctx.rank, len(pilot.units), ctx.size), pilot.empty())
        ctx.reduce_sum(evidence)
        self._add_cpu(stage.name, "search", time.process_time() - cpu_started)
        widths = None
        if ctx.is_root:
            rot, px = widths = pilot.widths(evidence)
            self._writing()
            self.results.set_attribute(stage.name, "prior_sigma", np.array([np.nan if rot is None else rot, np.nan if px is None else px]))
            log.info("%s: prior on the module's motion: %s rotation, %s shift (learned from %d particles)", stage.name,
                     "flat" if rot is None else f"σ {np.rad2deg(rot):.3g}°", "flat" if px is None else f"σ {px:.3g} px", len(pilot.ids))
        return ctx.bcast(widths)

    # -- one stage: reconstruction -------------------------------------------------------------
    def _exact_sum(self) -> eng.ExactSum:
        """The rounding grid of the accumulators, from bounds over every particle (once per run)."""
        if self.exact is None:
            mine = np.concatenate(self._my_blocks() or [np.zeros(0, np.int64)])
            image_bound, ctf_bound = self.engine.image_bounds(mine)
            image_bound, ctf_bound = self.ctx.allreduce_max(np.array([image_bound, ctf_bound]))
            self.exact = self.engine.exact_sum(image_bound, ctf_bound)
        return self.exact

    def _my_blocks(self) -> list:
        """This rank's consecutive share of the fixed particle blocks."""
        blocks = eng.reconstruction_blocks(self.engine.n)
        share = np.array_split(np.arange(len(blocks)), self.ctx.size)[self.ctx.rank]
        return [blocks[b] for b in share]

    def _half_maps(self, poses: eng.Poses, what: str):
        """The half maps (consensus frame of the poses) of every particle at ``poses`` (collective): each rank
        back-projects its blocks, the accumulators are summed exactly and each half reconstructed on its own rank
        (`summed_half_maps`); (half1, half2) on rank 0, None on the others, or False on every rank when a stop was asked."""
        ctx, engine = self.ctx, self.engine
        halves = engine.accumulators(self._exact_sum())
        mine = np.concatenate(self._my_blocks() or [np.zeros(0, np.int64)])
        tracker = ProgressLog(f"{what}: back-projection (rank 0's blocks)", len(mine)) if ctx.is_root else None
        # the order of the additions does not matter (exact sums): batches as large as the reader's, for the
        # scatter's locality (its tiles fill better with more images per call)
        for ids in np.array_split(mine, max(1, -(-len(mine) // eng.BLOCK_MAX))):
            if ctx.stop_requested:
                break
            engine.backproject(poses, ids, halves)
            if tracker:
                tracker.add(len(ids))
        if ctx.allreduce_max([float(ctx.stop_requested)])[0] > 0:  # a stop asked on any rank: every rank stops here
            return False
        reconstruction = self.cfg.reconstruction
        return summed_half_maps(ctx, halves, reconstruction.weight_floor, reconstruction.gridding_iterations)

    def _consensus_halves(self) -> bool:
        """Half maps of the consensus poses (``OUT/consensus/``), for the first iteration's search bands: the
        ones given (``consensus_half_maps``) or reconstructed; read back when a resumed run made them already.
        Rank 0 keeps them. False when a stop was asked."""
        ctx, engine = self.ctx, self.engine
        done = ctx.bcast(ctx.is_root and self.results.root_flag("consensus_halves") and engine.read_consensus_halves() is not None)
        if done:
            if ctx.is_root:
                self.consensus_halves = engine.read_consensus_halves()
            return True
        if self.cfg.consensus_half_maps:  # the consensus's own (RELION's Refine3D), nothing to reconstruct
            if ctx.is_root:
                self._writing()
                self.consensus_halves = engine.given_consensus_halves()
                self.results.set_root_flag("consensus_halves")
            return True
        half_maps = self._half_maps(engine.consensus_poses, "consensus half maps")
        if half_maps is False:
            return False
        if ctx.is_root:
            self._writing()
            self.consensus_halves = engine.write_consensus_halves(half_maps)
            self.results.set_root_flag("consensus_halves")
        return True

    def _reconstruct_stage(self, state, refined):
        ctx, engine, stage = self.ctx, self.engine, state.stage
        cpu_started = time.process_time()
        half_maps = self._half_maps(engine.reconstruction_poses(state, refined), stage.name)
        if half_maps is False:
            return None
        full = None
        if ctx.is_root:
            maps = engine.rebuild(state, half_maps)
            writing_started = time.process_time()
            self._add_cpu(stage.name, "reconstruction", writing_started - cpu_started)
            scores = self.results.read_stage(stage.name)["score"]
            self._writing()
            engine.write_module(state, maps, refined, scores)
            self.results.mark(stage.name, "reconstructed")
            self._add_cpu(stage.name, "writing", time.process_time() - writing_started)
            full = maps["full"]
        else:
            self._add_cpu(stage.name, "reconstruction", time.process_time() - cpu_started)
        self._record_cpu(stage.name)
        return ctx.bcast(full)

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
