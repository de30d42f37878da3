"""The run's record: its output folder's lock, the checkpoint (``results.h5``), the resolved config, the log, and
the CPU time of every stage. The refinement (`refine.run`) asks it what a resumed run did already and hands it
every finished piece of work; it never touches a file itself.

Rank 0 holds the files. Methods marked *collective* are called by every rank and return the same value on each
(rank 0's, broadcast by the distributor); the others do their work on rank 0 and nothing elsewhere, so the loop
calls them on every rank without asking who it is.

Opening (`open`, collective): rank 0 runs the validation `lorefine check` shares (`refine.preflight.check_run`),
takes the folder's lock (`io.runlock`; the folder is looked at again under it), and opens or creates
``results.h5`` (`io.results`); a mistake is one line on every rank (`Distributor.agree_on_error`). The lock is
checked before every write (`writing`) and refreshed by the distributor's watchdog thread; it is released last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time

import numpy as np

from lorefine_mpi import __version__
from lorefine_mpi.config import dump_config, search_fingerprint
from lorefine_mpi.errors import EXIT_STOPPED, InputError
from lorefine_mpi.io import relion_job
from lorefine_mpi.io.results import ResultsFile
from lorefine_mpi.io.runlock import RunLock
from lorefine_mpi.io.star import atomic_write_text, read_star
from lorefine_mpi.refine import layout
from lorefine_mpi.refine.preflight import check_output, check_run
from lorefine_mpi.refine.progress import RunProgress

log = logging.getLogger(__name__)

STALL_TIMEOUT_VARIABLE = "LOREFINE_STALL_TIMEOUT_S"
CPU_PARTS = ("search", "reconstruction", "writing")


def stall_timeout_s(cfg, quiet: bool = False) -> float:
    """``LOREFINE_STALL_TIMEOUT_S`` when set (a site's or a test's choice), else ``parallel.stall_timeout_s``: how long
    a rank may stay silent, and how long a lock may stay unrefreshed before another run takes the folder over.
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


class Recorder:
    """The record of one run of ``cfg`` (module docstring). dist: the run's `refine.distributor.Distributor`;
    command_line: recorded in results.h5 and the lock; resume: ``--continue`` (a checkpoint may be taken up);
    resume_command: the command that resumes the run, printed when it stops (default `resume_line`: refine's; a
    command that runs refine's stages for its own ends, as `discover`, gives its own)."""

    def __init__(self, cfg, dist, *, command_line: str, resume: bool, resume_command: str | None = None):
        self.cfg, self.dist, self.command_line, self.resume = cfg, dist, command_line, resume
        self.resume_command = resume_command or resume_line(cfg)
        self.folder = layout.RunFolder.of(cfg)
        self.timeout_s = stall_timeout_s(cfg, quiet=not dist.is_root)
        self.results = None
        self.lock = None
        self.log_file = None
        self.cpu_seconds = {}  # stage -> part -> CPU seconds of this rank
        fixed, k = isinstance(cfg.iterations, int), len(cfg.modules)  # the whole run's ETA, logged by rank 0
        self.progress = RunProgress((cfg.iterations if fixed else 2) * k, more_per_round=0 if fixed else k)

    # -- the run's life ---------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self):
        """Around the whole run (collective): the distributor's watchdog thread (stall detection, the lock's refresh),
        then `open`; at the end every rank meets (unless an error ends the run), the files close and the lock goes."""
        try:
            with self.dist.watching(self.timeout_s, self.stalled_line) as watchdog:
                try:
                    self.open(watchdog)
                    yield self
                    self.dist.barrier()  # every rank is done before the watchdogs stop
                finally:
                    self.close()
        finally:  # the watchdog thread, which refreshes the lock, has stopped
            self.release()

    def stalled_line(self, rank: int, seconds: float) -> str:
        return (f"lorefine: rank {rank}/{self.dist.size} sent nothing for {seconds:g} s (stopped, dead or hung), so the job ends; "
                f"finished work is saved, resume with: {self.resume_command}")

    def open(self, watchdog) -> None:
        """Collective: validate, lock, open (module docstring); ``watchdog`` (`Distributor.watching`) refreshes the lock."""
        error = None
        if self.dist.is_root:
            try:
                self._open(watchdog)
            except InputError as e:
                error = e
        self.dist.agree_on_error(error)

    def _open(self, watchdog) -> None:
        cfg, folder = self.cfg, self.folder
        summary = check_run(cfg, self.resume, lock_in_use=False)
        folder.out.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock.acquire(folder.out, self.timeout_s, command=self.command_line)
        watchdog.lock = self.lock
        # again: the folder may have changed meanwhile
        warnings = check_output(cfg, self.resume, summary.input_files, lock_in_use=False, stacks=summary.stacks)
        self.results = ResultsFile(
            folder.results,
            image_names=read_star(cfg.particles, cfg.project_dir).image_name,
            config_yaml=dump_config(cfg),
            fingerprint=search_fingerprint(cfg),
            command_line=self.command_line,
            version=__version__,
            resume=self.resume,
            stacks=summary.stacks,
            ranks=self.dist.size,
        )
        relion_job.begin(folder.job, self.command_line)  # the folder as a RELION job: note.txt, no end marker yet
        if not (folder.config.exists() and folder.config.read_text(encoding="utf-8") == dump_config(cfg)):
            atomic_write_text(folder.config, dump_config(cfg))
        # appends (a resumed run's log follows the first's); UTF-8 whatever the locale (its lines hold Å and °)
        self.log_file = logging.FileHandler(folder.log, encoding="utf-8")
        self.log_file.setFormatter(self.dist.log_formatter())
        logging.getLogger().addHandler(self.log_file)
        for line in dict.fromkeys(summary.warnings + warnings):
            log.warning("warning: %s", line)

    def close(self) -> None:
        """Close results.h5 and the log file (every file but the lock)."""
        self.close_results()
        if self.log_file is not None:
            logging.getLogger().removeHandler(self.log_file)
            self.log_file.close()
            self.log_file = None

    def close_results(self) -> None:
        if self.results is not None:
            self.results.close()
            self.results = None

    @property
    def holds_folder(self) -> bool:
        """Rank 0: this run took the output folder (its lock), so the folder's RELION job record is this run's."""
        return self.lock is not None

    def release(self) -> None:
        """Release the folder's lock (after the watchdog thread, which refreshes it, has stopped)."""
        if self.lock is not None:
            self.lock.release()

    def writing(self) -> None:
        """Before rank 0 writes: this run must still hold the folder's lock, and its checkpoint must still be where it
        writes it (a folder or results.h5 deleted or moved stops the run, saying so)."""
        if self.dist.is_root:
            self.lock.verify()
            if self.results is not None:
                self.results.check_present()

    def stopped(self) -> int:
        """A stop was asked and every rank has stopped: the resume line, printed once; `EXIT_STOPPED`."""
        if self.dist.is_root:
            log.warning("stopped on request with finished work saved in %s; resume with: %s", self.folder.results, self.resume_command)
            sys.stderr.write(f"lorefine: stopped; finished work is saved. Resume with: {self.resume_command}\n")
        return EXIT_STOPPED

    # -- the checkpoint ---------------------------------------------------------------------
    def work_units(self, stage, make_units, max_poses: int):
        """Collective: (unit_of_particle (n,), done (units,) bool) of a stage. The checkpoint fixes the work units of a
        stage it holds (whatever the parallel settings now); ``make_units()`` makes them for a new stage (``max_poses``:
        the posterior poses each particle keeps)."""
        found = None
        self.progress.stage_started(stage.name)
        if self.dist.is_root:
            group = self.results.stage(stage.name, iteration=stage.iteration, module=stage.module_name, unit_of_particle=make_units(),
                                       max_poses=max_poses)
            found = group["unit_of_particle"][...], self.results.done_units(stage.name)
        return self.dist.bcast(found)

    def unit_writer(self, stage, members, progress):
        """``record(unit, result)`` for `Distributor.run_units`: the unit's results into results.h5 (rank 0)."""

        def record(unit, result):
            self.writing()
            self.results.write_unit(stage.name, unit, members[unit], result)
            progress.add(len(members[unit]))

        return record

    def set_stage_attribute(self, stage, name: str, value) -> None:
        if self.dist.is_root:
            self.writing()
            self.results.set_attribute(stage.name, name, value)

    def stage_attribute(self, stage, name: str):
        """Collective: a stage's attribute in results.h5 (None when absent)."""
        return self.dist.on_root(lambda: self.results.stage_attribute(stage.name, name))

    def read_stage(self, stage) -> dict:
        """Rank 0: the search's results of a stage (`io.results.FIELDS`)."""
        return self.results.read_stage(stage.name)

    def write_poses(self, stage, poses, rotation_deg, shift_px) -> None:
        """Rank 0: the stage's final poses (and the mean motion taken out); the stage is complete."""
        self.writing()
        self.results.write_poses(stage.name, poses.as_fields(), rotation_deg, shift_px)
        self.results.mark(stage.name, "complete")

    def mark_reconstructed(self, stage) -> None:
        """Rank 0: the stage's outputs are written."""
        self.results.mark(stage.name, "reconstructed")

    def has_flag(self, name: str) -> bool:
        """Rank 0: whether the root flag ``name`` of results.h5 is set."""
        return self.results.root_flag(name)

    def set_flag(self, name: str) -> None:
        if self.dist.is_root:
            self.results.set_root_flag(name)

    def final_iteration(self) -> int | None:
        """Collective: the last iteration results.h5 records (``iterations: auto``, once the poses settled), or None."""
        return self.dist.on_root(lambda: self.results.final_iteration())

    def record_final_iteration(self, iteration: int, because: str) -> None:
        if self.dist.is_root:
            self.writing()
            self.results.set_final_iteration(iteration, because)

    # -- CPU time ---------------------------------------------------------------------------
    def add_cpu(self, stage, part: str, seconds: float) -> None:
        """This rank's CPU seconds of a stage's part (``search``, ``reconstruction``, ``writing``)."""
        self.cpu_seconds.setdefault(stage.name, {}).setdefault(part, 0.0)
        self.cpu_seconds[stage.name][part] += seconds

    def cpu_clock(self, stage, part: str):
        """A context manager adding the CPU time of its block to ``part`` of ``stage``."""
        return _CpuClock(self, stage, part)

    def record_cpu(self, stage) -> None:
        """Collective: the stage's CPU seconds per part, summed over ranks: logged by rank 0 and kept in
        ``results.h5`` (attribute ``cpu_seconds`` of the stage, JSON)."""
        mine = self.cpu_seconds.get(stage.name, {})
        total = np.array([mine.get(part, 0.0) for part in CPU_PARTS])
        self.dist.reduce_sum(total)
        if self.dist.is_root:
            self.results.set_attribute(stage.name, "cpu_seconds", json.dumps(dict(zip(CPU_PARTS, total.tolist()))))
            log.info("%s: CPU time (all ranks) search %.1f s, reconstruction %.1f s, writing %.1f s", stage.name, *total)
            self.progress.stage_done(stage.name)


class _CpuClock:
    def __init__(self, recorder, stage, part):
        self.recorder, self.stage, self.part = recorder, stage, part

    def __enter__(self):
        self.started = time.process_time()
        return self

    def __exit__(self, *exc):
        self.recorder.add_cpu(self.stage, self.part, time.process_time() - self.started)
        return False
