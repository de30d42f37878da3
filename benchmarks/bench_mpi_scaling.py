"""Particles per second of the search with 1 and 2 ranks (this machine has 2 cores), and what crosses MPI.

    python benchmarks/bench_mpi_scaling.py [--particles 2000] [--workdir DIR]

Simulates the default dataset (box 64), runs `lorefine refine` with 1 and 2 ranks, and reads the search
time of each stage from the log (the units' search, after the learned prior's pilot; the whole run's wall
time is printed beside it). Also prints the messages and bytes per particle that cross MPI during the
search (unit numbers out, small result arrays back) and per stage (result broadcast, accumulator reduction),
from which a 1,000-rank run can be estimated.
"""

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def search_seconds(log_text):
    """Sum over stages of the search's seconds, from each stage's last progress line
    ``STAGE: search: N/N particles (100%), R particles/s, done in …`` (N / R: the rate is printed to 0.1)."""
    last = {}
    for stage, done, total, rate in re.findall(r"(iteration_\d+/\w+): search: (\d+)/(\d+) particles \(100%\), ([\d.]+) particles/s", log_text):
        if done == total:
            last[stage] = int(done) / float(rate)
    return sum(last.values()), len(last)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--workdir", default="/tmp/lorefine_scaling")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lorefine = [sys.executable, "-m", "lorefine_mpi.cli.main"]
    subprocess.run(lorefine + ["simulate", "--output", str(work / "data"), "--n-particles", str(args.particles)], check=True, capture_output=True)
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    rates = {}
    for ranks in (1, 2):
        config = work / "data" / "lorefine.yaml"
        text = config.read_text().replace("output: refined/", f"output: refined_{ranks}/").replace("iterations: 2", "iterations: 1")  # one iteration's rate
        (work / "data" / f"run{ranks}.yaml").write_text(text)
        started = time.time()
        done = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "lorefine_mpi.cli.main", "refine",
                               str(work / "data" / f"run{ranks}.yaml")], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        wall = time.time() - started
        assert done.returncode == 0, done.stderr[-2000:]
        seconds, stages = search_seconds(done.stderr + done.stdout)
        rates[ranks] = stages * args.particles / seconds
        print(f"{ranks} rank(s): search {seconds:.1f} s for {stages} module stages × {args.particles} particles = "
              f"{rates[ranks]:.1f} particle-modules/s (whole run {wall:.0f} s)")
    print(f"parallel efficiency with 2 ranks on 2 cores: {100 * rates[2] / (2 * rates[1]):.1f} %")
    # What crosses MPI: the scheduler sends a unit number (a pickled int) and gets back the unit's results.
    unit_size = 64
    result = {"search_matrix": np.zeros((unit_size, 3, 3)), "search_origin_px": np.zeros((unit_size, 2)), "score": np.zeros(unit_size, np.float32),
              "rest_scale": np.zeros(unit_size, np.float32)}
    out_bytes = len(pickle.dumps(7))
    back_bytes = len(pickle.dumps((7, result, False)))
    print(f"search traffic per unit of {unit_size}: 2 messages ({out_bytes} B out, {back_bytes} B back) "
          f"= {2 / unit_size:.3f} messages and {(out_bytes + back_bytes) / unit_size:.0f} B per particle per module")
    per_particle_bcast = 9 * 8 + 2 * 8  # the final pose matrix and origin, float64
    print(f"per stage: rank 0 broadcasts the work units (4 B per particle) and the refined poses ({per_particle_bcast} B per "
          f"particle), and every rank sends its two "
          f"half-map accumulators to the reduction (box 64: {2 * 128 * 128 * 65 * 24 / 2**20:.0f} MiB; box 128: "
          f"{2 * 256 * 256 * 129 * 24 / 2**20:.0f} MiB per rank, independent of the particle count)")


if __name__ == "__main__":
    main()
