"""The MPI distributor: the only code that touches the communicator (mpi4py is imported in `parallel/` only).

`MPIDistributor` overrides the collective steps of `refine.distributor.Distributor` for many ranks: broadcasts,
reductions in chunks, node-shared read-only arrays (`shared`), the leader/worker hand-out of work units
(`scheduler`), stall detection (`watchdog`).

Failure policy (`guard`): a user's mistake found by rank 0 before heavy work is broadcast, so every rank
exits 2 with the same one-line message printed once (`agree_on_error`). Any other failure on one rank of
many is printed once, by that rank, and ends every rank through ``MPI_Abort`` within seconds (`end_job`;
MPI's own abort message is not printed): an `InputError` or a failing file system (a full disk) with its
one line and status 2, a bug with its traceback and status 1. A rank that stops answering is found by the
`watchdog`. SIGTERM, SIGUSR1 and SIGINT (Ctrl-C; mpiexec forwards it to every rank) ask for a stop
(``stop_requested``); a second Ctrl-C in one process stops at once (KeyboardInterrupt, status 3).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from lorefine_mpi.errors import EXIT_BUG, EXIT_INPUT_ERROR, EXIT_STOPPED, InputError, describe_os_error
from lorefine_mpi.parallel import scheduler
from lorefine_mpi.parallel.shared import SharedArray
from lorefine_mpi.parallel.watchdog import Watchdog
from lorefine_mpi.refine.distributor import Distributor, block_of

MOVE_TAG = 13  # `move_to_root`'s messages (the scheduler's are 11 and 12)
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun with an MPI plugin) started this process; also
    srun with several tasks and no plugin, so that `MPIDistributor.check_slurm` can refuse it. (mpi4py is not
    imported.)"""
    env = os.environ
    if any(name in env for name in _LAUNCHER_VARIABLES):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_STEP_ID") is not None


def world_communicator():
    """COMM_WORLD (an MPI launcher started this process), once `launcher.start_world` has checked that this launcher can
    start the MPI library mpi4py runs on (one line and exit status 2 otherwise, before MPI_Init)."""
    from lorefine_mpi.parallel.launcher import start_world

    try:
        return start_world(os.environ)
    except (ImportError, RuntimeError) as error:  # every rank says so: there is no communicator to agree on one
        raise InputError(f"an MPI launcher started lorefine, but mpi4py cannot load MPI ({error}); install mpi4py for "
                         "this MPI, or run lorefine without mpiexec/srun") from None


REDUCE_CHUNK_BYTES = 32 << 20  # MPI's reduction keeps buffers of a chunk's size on the ranks between root and leaves


def _reduce_in_place(comm, array: np.ndarray, root: int) -> None:
    """Sum ``array`` over the ranks of ``comm`` into rank ``root``'s copy, in place, in chunks of `REDUCE_CHUNK_BYTES`."""
    from mpi4py import MPI

    flat = array.reshape(-1)
    if np.iscomplexobj(flat):
        flat = flat.view(np.float64 if flat.dtype == np.complex128 else np.float32)
    step = max(1, REDUCE_CHUNK_BYTES // flat.itemsize)
    for start in range(0, flat.size, step):
        part = flat[start : start + step]
        if comm.Get_rank() == root:
            comm.Reduce(MPI.IN_PLACE, part, op=MPI.SUM, root=root)
        else:
            comm.Reduce(part, None, op=MPI.SUM, root=root)


def distributor() -> Distributor:
    """The distributor of this process: MPI's when a launcher started it, else the one-process one (and mpi4py is
    never imported, so `lorefine refine` runs where mpi4py or an MPI library is missing or cannot start)."""
    return MPIDistributor(world_communicator()) if launched_by_mpi() else Distributor()


class MPIDistributor(Distributor):
    """rank/size/node facts, collectives on numpy arrays, node-shared arrays, the work-unit hand-out."""

    def __init__(self, comm):
        super().__init__()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.is_root = self.rank == 0
        if self.size > 1:
            from mpi4py import MPI

            self.node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.half_comm = comm.Split(self.rank % 2, key=self.rank)  # the ranks of one half map (`my_halves`)
        else:
            self.node = self.half_comm = None
        self.node_rank = self.node.Get_rank() if self.node is not None else 0
        self.is_node_leader = self.node_rank == 0
        self._held = []

    # -- collectives -------------------------------------------------------------------------
    def bcast(self, obj, root: int = 0):
        return obj if self.size == 1 else self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def node_barrier(self) -> None:
        if self.node is not None:
            self.node.Barrier()

    def allreduce_max(self, array) -> np.ndarray:
        array = np.asarray(array, dtype=np.float64)
        if self.size == 1:
            return array
        from mpi4py import MPI

        out = np.empty_like(array)
        self.comm.Allreduce(array, out, op=MPI.MAX)
        return out

    def any_stop_requested(self) -> bool:
        return self.allreduce_max([float(self.stop_requested)])[0] > 0

    def move_to_root(self, obj, source: int):
        if self.size == 1 or source == 0:
            return obj if self.is_root else None
        if self.rank == source:
            self.comm.send(obj, dest=0, tag=MOVE_TAG)
        elif self.is_root:
            return self.comm.recv(source=source, tag=MOVE_TAG)
        return None

    def reduce_sum(self, array: np.ndarray, root: int = 0) -> None:
        """Sum ``array`` over ranks into the root's copy, in place (`_reduce_in_place`)."""
        if self.size > 1:
            _reduce_in_place(self.comm, array, root)

    def my_halves(self) -> tuple[int, ...]:
        return (1, 2) if self.size == 1 else (self.rank % 2 + 1,)

    def half_share(self, n: int) -> np.ndarray:
        if self.size == 1:
            return np.arange(n)
        return block_of(n, self.half_comm.Get_size(), self.half_comm.Get_rank())

    def reduce_half(self, array: np.ndarray, half: int) -> None:
        if half not in self.my_halves():
            raise ValueError(f"rank {self.rank} does not hold half {half}")
        if self.size > 1:  # the half's ranks are this rank's half_comm, its owner their first (key: world rank)
            _reduce_in_place(self.half_comm, array, 0)

    # -- node-shared memory ------------------------------------------------------------------
    def allocate(self, shape, dtype, fill) -> np.ndarray:
        if self.node is None:
            return super().allocate(shape, dtype, fill)
        shared = SharedArray(self, shape, dtype, fill)
        self._held.append(shared)
        return shared.array

    def free_all(self) -> None:
        for shared in self._held:
            shared.free()
        self._held = []

    # -- work units --------------------------------------------------------------------------
    def run_units(self, pending, process, record) -> bool:
        if self.size == 1:
            return super().run_units(pending, process, record)
        return scheduler.run_units(self, list(pending), process, record if self.is_root else None)

    # -- the run's life ----------------------------------------------------------------------
    def watching(self, timeout_s: float, stalled_line):
        return Watchdog(self, timeout_s, stalled_line)

    def lock_lost(self, error: InputError) -> None:
        if self.size > 1:
            self.end_job(EXIT_INPUT_ERROR, f"lorefine: error: {error}")

    def check_slurm(self) -> None:
        """Refuse the trap of srun starting N one-rank jobs (wrong --mpi plugin for the MPI build)."""
        ntasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
        if ntasks > 1 and self.size == 1 and os.environ.get("SLURM_STEP_ID") is not None:
            raise InputError(
                f"SLURM_NTASKS={ntasks} but MPI sees 1 rank: srun started independent copies; "
                "use 'srun --mpi=pmi2' (MPICH) or the plugin your MPI was built for"
            )

    def end_job(self, code: int, line: str | None = None) -> None:
        """Print ``line`` (one line, this rank) and end every rank with exit status ``code``. The abort's own
        message is not printed (this rank's stdout and stderr are closed first)."""
        if line:
            sys.stderr.write(line.rstrip("\n") + "\n")
        sys.stderr.flush()
        sys.stdout.flush()
        if self.size > 1:
            time.sleep(0.5 if line else 0.0)  # let the launcher forward the line before the abort ends its forwarding
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            self.comm.Abort(code)
        raise SystemExit(code)

    @contextlib.contextmanager
    def guard(self, stopped_line: str, resume_hint: str = ""):
        """Around a whole run: any failure on this rank ends every rank (module docstring).
        stopped_line: what to print when Ctrl-C stops the run at once; resume_hint: added to a file system's failure."""
        try:
            yield
        except InputError as error:
            if error.collective or self.size == 1:
                raise
            self.end_job(EXIT_INPUT_ERROR, f"lorefine: error: {error}")
        except OSError as error:  # the file system failed (a full disk, a lost mount)
            line = f"lorefine: error: {describe_os_error(error)}{resume_hint}"
            if self.size == 1:
                raise InputError(line.removeprefix("lorefine: error: ")) from None
            self.end_job(EXIT_INPUT_ERROR, line)
        except KeyboardInterrupt:
            self.end_job(EXIT_STOPPED, stopped_line)
        except SystemExit:
            raise
        except BaseException as error:  # a bug: report it with its traceback and end the job
            self.report_bug(error)
            self.end_job(EXIT_BUG)

    def agree_on_error(self, error: InputError | None) -> None:
        """Root's verdict on the inputs, broadcast: every rank raises the same InputError (or none), and
        only root's is printed. A rank whose own check failed where root's passed raises its own, loudly."""
        message = self.bcast(str(error) if error is not None else None)
        if message is not None:
            raise InputError(message, quiet=not self.is_root, collective=True)
        if error is not None:
            raise error
