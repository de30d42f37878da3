"""Who computes what: the `Distributor` that `refine.run.refine` is handed, here its one-process implementation.

The refinement (`refine.run`) is serial code that asks its distributor for every step that involves more than one
process: a value decided on rank 0 and shared (`bcast`), sums of accumulators (`reduce_sum`), node-shared
reference volumes (`allocate`), the hand-out of work units (`run_units`), this process's share of fixed blocks
(`share`), and whether anyone asked to stop (`any_stop_requested`). This class is all of that for one process:
every collective is the identity, allocations are plain arrays, work units run in order. The MPI implementation
(`parallel.mpi.MPIDistributor`) overrides the same methods and alone touches the communicator, so the algorithm
is written once (RELION's `MlOptimiser` / `MlOptimiserMpi` split) and gives the same bits on any rank count.

Failure policy (`guard`): a user's mistake is an `InputError`, printed once as one line with exit status 2 (the
CLI does it); a failing file system is one line too; Ctrl-C twice stops at once with status 3. SIGTERM, SIGUSR1
(Slurm's warnings before a time limit or preemption) and SIGINT set ``stop_requested``: units in flight finish
and are recorded, then the run returns `EXIT_STOPPED` with its resume line (`signal_handlers`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import traceback

import numpy as np

from lorefine_mpi.errors import EXIT_BUG, EXIT_STOPPED, InputError, describe_os_error
from lorefine_mpi.io.runlock import LockRefresher


def block_of(n: int, parts: int, index: int) -> np.ndarray:
    """Block ``index`` of ``range(n)`` cut into ``parts`` consecutive blocks of sizes differing by at most one."""
    return np.array_split(np.arange(n), parts)[index]


class Distributor:
    """One process: rank 0 of 1. Subclasses for many processes override the collectives (module docstring)."""

    rank = 0
    size = 1
    is_root = True
    is_node_leader = True

    def __init__(self):
        self.stop_requested = False

    # -- collectives --------------------------------------------------------------------------
    def bcast(self, obj, root: int = 0):
        """``obj`` of rank ``root``, on every rank."""
        return obj

    def barrier(self) -> None:
        """Every rank reaches this point before any goes on."""

    def reduce_sum(self, array: np.ndarray, root: int = 0) -> None:
        """``array`` summed over the ranks into rank ``root``'s copy, in place."""

    def allreduce_max(self, array) -> np.ndarray:
        """The element-wise maximum over ranks of a small float64 array, on every rank."""
        return np.asarray(array, dtype=np.float64)

    def move_to_root(self, obj, source: int):
        """``obj`` of rank ``source``, returned on rank 0 (None elsewhere); ranks 0 and ``source`` both call it."""
        return obj

    def any_stop_requested(self) -> bool:
        """Whether a stop was asked on any rank (collective)."""
        return self.stop_requested

    def share(self, n: int) -> np.ndarray:
        """This rank's consecutive share of ``range(n)`` (fixed blocks, the same split on every call)."""
        return block_of(n, self.size, self.rank)

    # -- the two half maps: one accumulator per process ------------------------------------------------------------------
    def my_halves(self) -> tuple[int, ...]:
        """The half maps (1, 2) whose particles this process back-projects, one accumulator at a time: both, in turn, in
        one process; with many, half 1 on the even ranks and half 2 on the odd ones (`reconstruction.reconstruct.distributed_half_maps`)."""
        return (1, 2)

    def half_owner(self, half: int) -> int:
        """The rank that sums and reconstructs half map ``half`` (1 or 2)."""
        return (half - 1) % self.size

    def half_share(self, n: int) -> np.ndarray:
        """This rank's consecutive share of ``range(n)`` among the ranks of its half (fixed blocks, the same split on every call)."""
        return np.arange(n)

    def reduce_half(self, array: np.ndarray, half: int) -> None:
        """``array`` summed over the ranks of half map ``half`` into its owner's copy, in place (collective over those ranks)."""

    def on_root(self, compute):
        """``compute()`` run on rank 0, its value on every rank."""
        return self.bcast(compute() if self.is_root else None)

    # -- node-shared memory -------------------------------------------------------------------
    def allocate(self, shape, dtype, fill) -> np.ndarray:
        """A read-only array of ``shape`` and ``dtype`` filled by ``fill(out)``, one copy per node (here: a plain
        array). Every rank of a node must allocate the same arrays in the same order."""
        out = np.empty(shape, dtype=dtype)
        fill(out)
        return out

    def free_all(self) -> None:
        """Release every array `allocate` gave since the last call."""

    # -- work units ---------------------------------------------------------------------------
    def run_units(self, pending, process, record) -> bool:
        """Process every unit of ``pending`` (ascending) with ``process(unit) -> result``; ``record(unit, result)``
        runs on rank 0 as each finishes. False (on every rank) when a stop request ended the hand-out first."""
        for unit in pending:
            if self.stop_requested:
                return False
            record(unit, process(unit))
        return True

    # -- the run's life -----------------------------------------------------------------------
    def watching(self, timeout_s: float, stalled_line):
        """A context manager around the run that refreshes the output folder's lock once it is set (``.lock``) and,
        with many processes, ends the job when a rank falls silent for ``timeout_s`` (``stalled_line(rank, s)``)."""
        return LockRefresher(timeout_s)

    def check_slurm(self) -> None:
        """Refuse a launch that went wrong (`parallel.mpi.MPIDistributor.check_slurm`); one process started by hand is fine."""

    def lock_lost(self, error: InputError) -> None:
        """Another run took the output folder over: one process notices at its next write (`RunLock.verify`)."""

    def log_formatter(self) -> logging.Formatter:
        """Log lines carry the time and ``rank/size``."""
        return logging.Formatter(f"%(asctime)s [{self.rank}/{self.size}] %(message)s", "%H:%M:%S")

    def agree_on_error(self, error: InputError | None) -> None:
        """Rank 0's verdict on the inputs, shared: every rank raises the same InputError (or none), printed once."""
        if error is not None:
            raise error

    def end_job(self, code: int, line: str | None = None) -> None:
        """Print ``line`` and end the job (every rank) with exit status ``code``."""
        if line:
            sys.stderr.write(line.rstrip("\n") + "\n")
        sys.stderr.flush()
        sys.stdout.flush()
        raise SystemExit(code)

    @contextlib.contextmanager
    def signal_handlers(self):
        """While inside: SIGTERM / SIGUSR1 (Slurm's warnings before a time limit or preemption) and SIGINT
        (Ctrl-C) set ``stop_requested``; a second SIGINT raises KeyboardInterrupt. The previous handlers
        are restored after."""

        def handler(signum, frame):
            if signum == signal.SIGINT and self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        signals = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
        previous = {sig: signal.signal(sig, handler) for sig in signals}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @contextlib.contextmanager
    def guard(self, stopped_line: str, resume_hint: str = ""):
        """Around a whole run: a user's mistake goes on to the CLI (one line, status 2), so does a failing file
        system, with ``resume_hint``; Ctrl-C twice ends the run at once with ``stopped_line`` (status 3); a bug is
        printed with its traceback (status 1). (`parallel.mpi.MPIDistributor.guard`: the same for every rank.)"""
        try:
            yield
        except InputError:
            raise
        except OSError as error:  # the file system failed (a full disk, a lost mount)
            raise InputError(f"{describe_os_error(error)}{resume_hint}") from None
        except KeyboardInterrupt:
            self.end_job(EXIT_STOPPED, stopped_line)
        except SystemExit:
            raise
        except BaseException as error:  # a bug: report it with its traceback
            self.report_bug(error)
            self.end_job(EXIT_BUG)

    def report_bug(self, error: BaseException) -> None:
        sys.stderr.write(f"lorefine: rank {self.rank}/{self.size} failed: {error.__class__.__name__}: {error}\n")
        traceback.print_exc(file=sys.stderr)
