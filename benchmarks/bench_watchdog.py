"""Can the stall watchdog mistake a long computation for a stalled rank? And what does the exact summation of
the reconstruction cost?

    python benchmarks/bench_watchdog.py [--box 128] [--particles 256]

The watchdog is a Python thread; it runs while the main thread computes only if the computation lets go of
the GIL now and then. This measures the longest gap between the wake-ups of a thread that asks to wake every
0.1 s (as the watchdog polls) while the main thread back-projects one block of particles (box N, padding 2:
the bincount scatter) and while it rebuilds the maps of a module from its accumulators (`maps_from_halves`,
10 gridding iterations: FFTs of the (2N)³ grid) — the longest computations of a run. The stall timeout must
be far above it. It also times the same back-projection with every term rounded to `engine.ExactSum`'s grid
(what a run does, for maps that are the same bits on any number of ranks) against it unrounded, both into
accumulators already in memory.
"""

import argparse
import threading
import time

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.projection import fourier
from lorefine_mpi.reconstruction.backproject import BackProjector
from lorefine_mpi.reconstruction.reconstruct import maps_from_halves
from lorefine_mpi.refine.engine import ExactSum


class Gaps:
    """A thread that wakes every ``period`` s and keeps the longest gap between two wake-ups."""

    def __init__(self, period=0.1):
        self.period, self.longest, self._stop = period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(self.period):
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--particles", type=int, default=256)
    args = p.parse_args()
    n, box = args.particles, args.box
    rng = np.random.default_rng(0)
    images_ft = fourier.to_fourier(rng.normal(size=(n, box, box)).astype(np.float32))
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, n)))
    for steps in ((0.0, 0.0), ExactSum(1e12, 1e9).steps):  # load the compiled kernels once, outside the timings
        BackProjector(box, 2, steps).insert(images_ft[:2], matrices[:2])
    halves = [BackProjector(box, 2) for _ in range(2)]
    with Gaps() as gaps:
        started = time.perf_counter()
        for h, bp in enumerate(halves):
            bp.insert(images_ft[h::2], matrices[h::2])
        insert_s = time.perf_counter() - started
    print(f"back-projection of {n} particles of {box}² (padding 2): {insert_s:.1f} s; longest gap of the watchdog thread {gaps.longest:.2f} s")
    # the cost of rounding every term: both variants timed on a second pass into accumulators already in memory
    plain = [BackProjector(box, 2) for _ in range(2)]
    rounded = [BackProjector(box, 2, ExactSum(1e12, 1e9).steps) for _ in range(2)]
    seconds = {}
    for name, pair in (("plain", plain), ("rounded", rounded)):
        for _ in range(2):
            started = time.perf_counter()
            for h, bp in enumerate(pair):
                bp.insert(images_ft[h::2], matrices[h::2])
            seconds[name] = time.perf_counter() - started
    print(f"the same into accumulators already in memory: {seconds['plain']:.1f} s; with every term rounded to the exact-sum grid: "
          f"{seconds['rounded']:.1f} s ({100 * (seconds['rounded'] / seconds['plain'] - 1):+.0f} %)")
    with Gaps() as gaps:
        started = time.perf_counter()
        maps_from_halves(halves)
        rebuild_s = time.perf_counter() - started
    print(f"maps from the accumulators ({box}³, padding 2, 10 gridding iterations): {rebuild_s:.1f} s; "
          f"longest gap of the watchdog thread {gaps.longest:.2f} s")


if __name__ == "__main__":
    main()
