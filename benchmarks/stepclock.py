"""`lorefine` with a CPU clock on each named step of a refinement: what `benchmarks/refine_runs.py` starts in place of
the `lorefine` executable (under mpiexec, one process per rank, like `mpiexec -n R lorefine refine CONFIG.yaml`).

    python benchmarks/stepclock.py refine CONFIG.yaml          (env LOREFINE_STEPCLOCK_DIR: where each rank writes)

The same CLI entry as the `lorefine` script (`lorefine_mpi.cli.main:main`), in a process that first wraps the functions
of `STEPS` (a few dozen `time.process_time()` calls per stage: nothing the run's own CPU time would show). Every CPU
second of the process is charged to exactly one step: the innermost wrapped function running in the main thread
(`other` outside all of them: the interpreter and imports, reading the inputs), and each step is keyed by the phase it
ran in (the outermost wrapped phase: consensus half maps, a stage's search or reconstruction, post-processing). At exit
each rank writes ``rank_<r>.json``: {"rank", "pid", "process_cpu_s", "steps": {"phase/step": CPU s}, "missing": [...]}.

A name of `STEPS` that the program no longer has is listed under ``missing`` (its CPU goes to the step around it) and
printed by bench_scale, so a refactoring shows up as a named gap, not as a wrong figure.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

DIRECTORY_VARIABLE = "LOREFINE_STEPCLOCK_DIR"

# (step, "module:Qualified.name", phase?) — a phase names the part of the run the steps inside it belong to.
STEPS = [
    ("start-up", "lorefine_mpi.refine.recorder:Recorder.open", False),
    ("start-up", "lorefine_mpi.refine.engine:RefineEngine.__init__", False),
    ("consensus half maps", "lorefine_mpi.refine.run:_Run.consensus_halves", True),
    ("stage search", "lorefine_mpi.refine.run:_Run.search", True),
    ("stage reconstruction", "lorefine_mpi.refine.run:_Run.reconstruct", True),
    ("post-processing", "lorefine_mpi.refine.finish:finish_run", True),
    ("band", "lorefine_mpi.refine.run:_Run._band", False),
    ("prior pilot", "lorefine_mpi.refine.run:_Run.prior_widths", False),
    ("stage set-up", "lorefine_mpi.refine.engine:RefineEngine.stage_search", False),
    ("hand-out", "lorefine_mpi.refine.distributor:Distributor.run_units", False),
    ("hand-out", "lorefine_mpi.parallel.mpi:MPIDistributor.run_units", False),
    ("search", "lorefine_mpi.refine.engine:StageSearch.search_unit", False),
    ("final poses", "lorefine_mpi.refine.run:_Run._final_poses", False),
    ("image bounds", "lorefine_mpi.refine.engine:RefineEngine.image_bounds", False),
    ("back-projection", "lorefine_mpi.refine.engine:RefineEngine.backproject", False),
    ("back-projection", "lorefine_mpi.refine.finish:consensus_half_maps", False),
    ("gridding", "lorefine_mpi.reconstruction.backproject:BackProjector.reconstruct", False),
    ("writing", "lorefine_mpi.refine.engine:RefineEngine.write_module", False),
    ("writing", "lorefine_mpi.refine.engine:RefineEngine.write_combined", False),
    ("writing", "lorefine_mpi.refine.engine:RefineEngine.write_consensus_halves", False),
    ("local resolution", "lorefine_mpi.validation.locres:local_resolution", False),
    ("waiting (MPI)", "lorefine_mpi.parallel.mpi:MPIDistributor.bcast", False),
    ("waiting (MPI)", "lorefine_mpi.parallel.mpi:MPIDistributor.barrier", False),
    ("waiting (MPI)", "lorefine_mpi.parallel.mpi:MPIDistributor.reduce_sum", False),
    ("waiting (MPI)", "lorefine_mpi.parallel.mpi:MPIDistributor.reduce_half", False),
    ("waiting (MPI)", "lorefine_mpi.parallel.mpi:MPIDistributor.move_to_root", False),
    ("waiting (MPI)", "lorefine_mpi.parallel.mpi:MPIDistributor.allreduce_max", False),
]


class Clock:
    """Exclusive CPU seconds per (phase, step) of the main thread's stack of wrapped calls."""

    def __init__(self):
        self.main = threading.get_ident()
        self.stack = [("other", "other")]  # (phase, step)
        self.seconds = {}
        self.last = time.process_time()

    def _charge(self) -> None:
        now = time.process_time()
        key = "/".join(self.stack[-1])
        self.seconds[key] = self.seconds.get(key, 0.0) + now - self.last
        self.last = now

    def wrap(self, function, step: str, phase: bool):
        @functools.wraps(function)
        def clocked(*args, **kwargs):
            if threading.get_ident() != self.main:
                return function(*args, **kwargs)
            self._charge()
            outer = self.stack[-1][0]
            self.stack.append((step if phase else outer, step))
            try:
                return function(*args, **kwargs)
            finally:
                self._charge()
                self.stack.pop()

        return clocked

    def report(self, directory: Path, missing: list) -> None:
        self._charge()
        rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
        times = os.times()
        record = {"rank": rank, "pid": os.getpid(), "process_cpu_s": times.user + times.system,
                  "steps": {k: round(v, 4) for k, v in sorted(self.seconds.items())}, "missing": missing}
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"rank_{rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)


def install(clock: Clock) -> list:
    """Wrap every function of `STEPS` that exists (a method on its class, a function in its module: every caller
    that reaches it through the class or the module sees the wrapper); the names not found."""
    missing = []
    for step, name, phase in STEPS:
        module_name, qualified = name.split(":")
        try:
            owner = importlib.import_module(module_name)
            *path, attribute = qualified.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        except (ImportError, AttributeError, KeyError):
            missing.append(name)
            continue
        setattr(owner, attribute, clock.wrap(original, step, phase))
    return missing


def main() -> int:
    from lorefine_mpi.cli import main as cli  # first: it sets the thread variables before numpy loads

    clock = Clock()
    clock.seconds["other/other"] = time.process_time()  # the interpreter and the imports so far
    missing = install(clock)
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if directory:
        atexit.register(clock.report, Path(directory), missing)
    sys.argv[0] = "lorefine"
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
