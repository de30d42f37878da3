"""How a module's reconstruction cost grows with the poses each particle is inserted at
(`reconstruction.poses: posterior`, at most `reconstruction.max_poses`).

    python benchmarks/bench_posterior_insertion.py DATASET [--particles 2000] [--poses 1 2 3 4 8]

DATASET: a folder of `lorefine simulate` (its particles.star and stack, with CTF when it has one). For each pose
count K the script inserts the same particles into a pair of half-map accumulators at K poses each (the particle's
pose and K - 1 others turned by about 1°, each with weight 1/K: what a posterior of K candidates costs; the
weights do not change the work), exactly as a refine stage does (`reconstruction.reconstruct.backproject_halves`),
then reconstructs both half maps (the fixed cost: gridding and the inverse FFT, the same for any K). It prints
the CPU seconds of each part (this process, one thread), the insertion per particle, and the whole
reconstruction per particle at this N relative to K = 1 (today's `best`). Run it on an otherwise idle machine
for absolute figures; the ratios hold under load better than the seconds do.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lorefine_mpi.geometry import rotations  # noqa: E402
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star  # noqa: E402
from lorefine_mpi.projection.source import ParticleSource  # noqa: E402
from lorefine_mpi.reconstruction.reconstruct import backproject_halves, half_subsets, maps_from_halves  # noqa: E402

SPREAD_DEG = 1.0  # how far the extra poses are turned from the particle's pose (about a posterior's spread here)


def posterior_poses(table, k: int, seed: int = 0):
    """(matrices (n, k, 3, 3), origins (n, k, 2), weights (n, k)): each particle's pose and k - 1 poses turned by
    ~SPREAD_DEG about random axes, at its origin, weights 1/k."""
    n = len(table)
    rng = np.random.default_rng(seed)
    turn = rotations.from_rotation_vector(rng.normal(0.0, np.deg2rad(SPREAD_DEG) / np.sqrt(3), (n, k, 3)))
    turn[:, 0] = np.eye(3)
    matrices = table.matrices[:, None] @ turn
    origins = np.repeat(table.origin_px[:, None], k, axis=1)
    return matrices, origins, np.full((n, k), 1.0 / k)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--poses", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    args = p.parse_args(argv)
    table = read_star(args.dataset / "particles.star")
    n = min(args.particles, len(table))
    box = mrc.read_map(args.dataset / "consensus.mrc")[0].shape[0]
    source = ParticleSource(table, box, table.has_ctf)
    ids = np.arange(n)
    subset = half_subsets(table)
    print(f"{args.dataset}: {n} particles of {source.box}², CTF {'on' if source.use_ctf else 'off'}; one thread")
    print(f"{'poses':>5} {'insertion s':>12} {'per particle ms':>16} {'reconstruct s':>14} {'total per particle ms':>22} {'vs K=1':>7}")
    warm = posterior_poses(table, 1)  # compile the kernels before the clock starts
    backproject_halves(source, ids[:8], subset=subset, matrices=warm[0], origin_px=warm[1], weights=warm[2])
    base = None
    for k in args.poses:
        matrices, origins, weights = posterior_poses(table, k)
        started = time.process_time()
        halves = backproject_halves(source, ids, subset=subset, matrices=matrices, origin_px=origins, weights=weights)
        inserted = time.process_time()
        maps_from_halves(halves)
        done = time.process_time()
        insertion, fixed = inserted - started, done - inserted
        per = 1e3 * (insertion + fixed) / n
        base = base or per
        print(f"{k:5d} {insertion:12.1f} {1e3 * insertion / n:16.2f} {fixed:14.1f} {per:22.2f} {per / base:6.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
