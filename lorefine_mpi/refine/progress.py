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
