"""Stall detection: heartbeats between rank 0 and every other rank, on a thread of each rank.

A rank that is stopped (SIGSTOP, a frozen node), dead without its launcher noticing, or hung in a system
call sends nothing; MPI itself would wait for it forever. Every rank's watchdog thread sends a small message
every ``interval`` (rank 0 to every other rank, the others to rank 0) on a communicator of its own, and
watches the ranks it hears from. When one has been silent for ``timeout_s`` the watchdog prints one line
naming it and ends the job (`ParallelContext.end_job`, status 3: finished work is in the checkpoint). The
other ranks' watchdogs wait a little longer for rank 0 the higher their rank, so rank 1 reports a silent
rank 0 and its abort ends the others before they would print the same line.

Long computations do not look like a stall: the thread runs while the main thread computes or waits in an
MPI call (numpy, BLAS, FFTs and mpi4py release the GIL). A process that was itself suspended (SIGSTOP then
SIGCONT) forgives the silence of the others over that time. The thread needs MPI_THREAD_MULTIPLE; with a
lower thread level (some MPI builds) stall detection is off and a warning says so.

The watchdog of rank 0 also refreshes the output folder's lock (`io.runlock.LockRefresher`, what one process
runs alone), so that another run can tell a live holder from a dead one; a lost lock ends the job.
"""

from __future__ import annotations

import logging
import time

from lorefine_mpi.errors import EXIT_INPUT_ERROR, EXIT_STOPPED
from lorefine_mpi.io.runlock import LockRefresher

log = logging.getLogger(__name__)

_TAG = 1
REPORT_DELAY_PER_RANK_S = 1.0  # rank r > 0 waits (r − 1) × this (at most 10 ×) longer for rank 0 to speak


class Watchdog(LockRefresher):
    """A daemon thread per rank; use as a context manager around the run.

    dist: the `parallel.mpi.MPIDistributor`. timeout_s: silence that ends the job. stalled_line(rank, seconds) -> str:
    the line to print. ``lock``: an `io.runlock.RunLock` to refresh (rank 0), set once taken; losing it ends the job.
    """

    def __init__(self, dist, timeout_s: float, stalled_line):
        lost = None if dist.size == 1 else (lambda error: dist.end_job(EXIT_INPUT_ERROR, f"lorefine: error: {error}"))
        super().__init__(timeout_s, on_lost=lost)  # one process: its next write checks the lock and stops
        self.dist, self.stalled_line = dist, stalled_line
        self.comm = None
        self.peers = []
        if dist.size > 1:
            from mpi4py import MPI

            if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:
                self.comm = dist.comm.Dup()  # collective: every rank builds its watchdog at the same point
                self.peers = list(range(1, dist.size)) if dist.is_root else [0]
            elif dist.is_root:
                log.warning("stall detection is off: the MPI library gives thread level %d, not MPI_THREAD_MULTIPLE", MPI.Query_thread())
        self._last_loop = None
        self._last_seen = {}
        self._next_beat = None
        self._sends = {}  # peer -> its last heartbeat's request

    def __enter__(self):
        now = time.monotonic()
        self._last_loop, self._next_beat = now, now
        self._last_seen = {p: now for p in self.peers}
        return super().__enter__()

    def _allowed_silence(self, peer: int) -> float:
        if self.dist.is_root:
            return self.timeout_s
        return self.timeout_s + min(self.dist.rank - 1, 10) * REPORT_DELAY_PER_RANK_S

    def tick(self, now: float) -> None:
        """Heartbeats out, heartbeats in, a silent peer ends the job; then the lock's refresh."""
        if now - self._last_loop > min(self.timeout_s / 2.0, 5 * self.interval_s):
            self._last_seen = {p: now for p in self.peers}  # this process was suspended: it cannot judge the others
        self._last_loop = now
        if self.comm is not None:
            if now >= self._next_beat:
                for peer in self.peers:  # a peer that does not take its heartbeats gets no more queued
                    if peer not in self._sends or self._sends[peer].Test():
                        self._sends[peer] = self.comm.isend(None, dest=peer, tag=_TAG)
                self._next_beat = now + self.interval_s
            for peer in self._received():
                self._last_seen[peer] = time.monotonic()
            for peer, seen in self._last_seen.items():
                silent = time.monotonic() - seen
                if silent > self._allowed_silence(peer):
                    self.dist.end_job(EXIT_STOPPED, self.stalled_line(peer, self.timeout_s))
        super().tick(now)

    def finish(self) -> None:
        deadline = time.monotonic() + 1.0  # let the last heartbeats complete (they are small: sent at once)
        for request in self._sends.values():
            while not request.Test() and time.monotonic() < deadline:
                time.sleep(0.01)

    def _received(self):
        from mpi4py import MPI

        status = MPI.Status()
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG, status=status):
            source = status.Get_source()
            self.comm.recv(source=source, tag=_TAG)
            yield source
