"""Progress of long work as log lines at a fixed cadence, which read well in a batch log:
``STAGE: 1536/4000 particles (38%), 41.2 particles/s, ETA 1m00s``."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

CADENCE_S = 30.0  # a line at most this often (and one when the work is done)


def duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLog:
    """Counts finished items of ``total`` and logs done, rate and ETA every ``every_s`` seconds and at the end."""

    def __init__(self, what: str, total: int, unit: str = "particles", every_s: float = CADENCE_S, clock=time.monotonic,
                 emit=None):
        self.what, self.total, self.unit, self.every_s = what, int(total), unit, every_s
        self.clock = clock
        self.emit = emit or log.info
        self.started = self.last = clock()
        self.done = 0

    def add(self, count: int) -> None:
        self.done += int(count)
        now = self.clock()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            self.emit(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        head = f"{self.what}: {self.done}/{self.total} {self.unit} ({100.0 * self.done / max(self.total, 1):.0f}%), {rate:.1f} {self.unit}/s"
        if self.done >= self.total:
            return f"{head}, done in {duration(elapsed)}"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{head}, ETA {duration(eta) if eta != float('inf') else 'unknown'}"


class RunProgress:
    """The whole run's progress: after each module stage (one iteration's search and reconstruction of one module), a
    line with the stages done, the time so far and an ETA for the rest of the refinement:
    ``run: 2/4 module stages done in 1m10s (this attempt); ETA 1m10s for the other 2, then the end-of-run analysis``.

    The ETA is the remaining stages times the mean time of the stages this process has done since its first stage
    started (every stage searches all particles of one module and reconstructs it, so they cost about the same; in a
    resumed run the stages the checkpoint held go faster, and the ETA is then pessimistic at first).

    more_per_round: with ``iterations: auto`` the count is not known: ``total_stages`` is the least (two iterations), and
    a stage begun beyond it adds one more iteration's ``more_per_round`` stages."""

    def __init__(self, total_stages: int, clock=time.monotonic, emit=None, more_per_round: int = 0):
        self.total = int(total_stages)
        self.more_per_round = int(more_per_round)
        self.clock = clock
        self.emit = emit or log.info
        self.first_started = None
        self.done = set()

    def stage_started(self, name: str) -> None:
        if self.more_per_round and name not in self.done and len(self.done) >= self.total:
            self.total += self.more_per_round
        if self.first_started is None:
            self.first_started = self.clock()

    def stage_done(self, name: str) -> None:
        if self.first_started is None:
            self.first_started = self.clock()
        self.done.add(name)
        self.emit(self.line(self.clock()))

    def line(self, now: float) -> str:
        done, elapsed = len(self.done), max(now - self.first_started, 0.0)
        head = f"run: {done}/{self.total} module stages done in {duration(elapsed)} (this attempt)"
        left = self.total - done
        if left <= 0:
            return f"{head}; next: the end-of-run analysis"
        eta = left * elapsed / max(done, 1)
        return f"{head}; ETA {duration(eta)} for the other {left}, then the end-of-run analysis"
