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

The watchdog of rank 0 (or of the one process) also refreshes the output folder's lock (`io.runlock`),
so that another run can tell a live holder from a dead one.
"""

from __future__ import annotations

import logging
import threading
import time

from lorefine_mpi.errors import EXIT_INPUT_ERROR, EXIT_STOPPED, InputError

log = logging.getLogger(__name__)

_TAG = 1
REPORT_DELAY_PER_RANK_S = 1.0  # rank r > 0 waits (r − 1) × this (at most 10 ×) longer for rank 0 to speak


class Watchdog:
    """A daemon thread per rank; use as a context manager around the run.

    ctx: the `ParallelContext`. timeout_s: silence that ends the job. stalled_line(rank, seconds) -> str:
    the line to print. lock: an `io.runlock.RunLock` to refresh (rank 0), or None; may be set later.
    """

    def __init__(self, ctx, timeout_s: float, stalled_line, lock=None):
        self.ctx, self.timeout_s, self.stalled_line, self.lock = ctx, float(timeout_s), stalled_line, lock
        self.interval_s = min(10.0, self.timeout_s / 5.0)
        self._stop = threading.Event()
        self._thread = None
        self.comm = None
        self.peers = []
        if ctx.comm is not None and ctx.size > 1:
            from mpi4py import MPI

            if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:
                self.comm = ctx.comm.Dup()  # collective: every rank builds its watchdog at the same point
                self.peers = list(range(1, ctx.size)) if ctx.is_root else [0]
            elif ctx.is_root:
                log.warning("stall detection is off: the MPI library gives thread level %d, not MPI_THREAD_MULTIPLE", MPI.Query_thread())

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name="lorefine-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def _allowed_silence(self, peer: int) -> float:
        if self.ctx.is_root:
            return self.timeout_s
        return self.timeout_s + min(self.ctx.rank - 1, 10) * REPORT_DELAY_PER_RANK_S

    def _loop(self) -> None:
        poll = min(0.5, self.interval_s / 4.0)
        now = time.monotonic()
        last_seen = {p: now for p in self.peers}
        last_loop, next_beat, next_refresh = now, now, now + self.interval_s
        sends = {}  # peer -> its last heartbeat's request
        while not self._stop.wait(poll):
            now = time.monotonic()
            if now - last_loop > min(self.timeout_s / 2.0, 5 * self.interval_s):
                last_seen = {p: now for p in self.peers}  # this process was suspended: it cannot judge the others
            last_loop = now
            if self.comm is not None:
                if now >= next_beat:
                    for peer in self.peers:  # a peer that does not take its heartbeats gets no more queued
                        if peer not in sends or sends[peer].Test():
                            sends[peer] = self.comm.isend(None, dest=peer, tag=_TAG)
                    next_beat = now + self.interval_s
                for peer in self._received():
                    last_seen[peer] = time.monotonic()
                for peer, seen in last_seen.items():
                    silent = time.monotonic() - seen
                    if silent > self._allowed_silence(peer):
                        self.ctx.end_job(EXIT_STOPPED, self.stalled_line(peer, self.timeout_s))
            lock = self.lock
            if lock is not None and now >= next_refresh:
                next_refresh = now + self.interval_s
                try:
                    lock.refresh()
                except InputError as error:  # another run took the folder over
                    if self.comm is None and self.ctx.size == 1:
                        self.lock = None  # one process: its next write checks the lock and stops with this error
                        continue
                    self.ctx.end_job(EXIT_INPUT_ERROR, f"lorefine: error: {error}")
                except OSError as error:  # a passing file-system hiccup: try again next time
                    log.warning("could not refresh %s: %s", lock.path, error)
        deadline = time.monotonic() + 1.0  # let the last heartbeats complete (they are small: sent at once)
        for request in sends.values():
            while not request.Test() and time.monotonic() < deadline:
                time.sleep(0.01)

    def _received(self):
        from mpi4py import MPI

        status = MPI.Status()
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG, status=status):
            source = status.Get_source()
            self.comm.recv(source=source, tag=_TAG)
            yield source
