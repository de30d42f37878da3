"""Read and write a 100,000-particle RELION 3.1 STAR file: lorefine's parser and writer against the `starfile`
package (PyPI; pandas underneath), and whether each keeps every value's text through a round trip.

    pip install starfile && python benchmarks/bench_star.py [--particles 100000]

lorefine's side is the whole job (`read_star` to a ParticleTable in internal units, `write_star` from it);
starfile's is its DataFrames (no units, no image-name resolution).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lorefine_mpi.io.particles import OpticsGroup
from lorefine_mpi.io.star import read_star, table_from_columns, write_star


def best_of(repeats, function):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.particles
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp())
    columns = {
        "rlnImageName": [f"{i % 1000 + 1:06d}@Extract/job005/Movies/mic{i // 1000:05d}.mrcs" for i in range(n)],
        "rlnMicrographName": [f"MotionCorr/job002/Movies/mic{i // 1000:05d}.mrc" for i in range(n)],
        "rlnCoordinateX": rng.uniform(0, 4000, n), "rlnCoordinateY": rng.uniform(0, 4000, n),
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n), "rlnAnglePsi": rng.uniform(-180, 180, n),
        "rlnOriginXAngst": rng.normal(0, 4, n), "rlnOriginYAngst": rng.normal(0, 4, n),
        "rlnDefocusU": rng.uniform(5000, 30000, n), "rlnDefocusV": rng.uniform(5000, 30000, n), "rlnDefocusAngle": rng.uniform(0, 180, n),
        "rlnCtfBfactor": np.zeros(n), "rlnCtfScalefactor": np.ones(n), "rlnPhaseShift": np.zeros(n),
        "rlnOpticsGroup": np.ones(n, int), "rlnRandomSubset": rng.integers(1, 3, n), "rlnClassNumber": np.ones(n, int),
        "rlnLogLikeliContribution": rng.normal(1e5, 1e3, n), "rlnMaxValueProbDistribution": rng.uniform(0, 1, n),
        "rlnNrOfSignificantSamples": rng.integers(1, 50, n),
    }
    path = folder / "run_data.star"
    write_star(path, table_from_columns([OpticsGroup(1, "opticsGroup1", 1.06, 256, 300.0, 2.7, 0.1)], columns, path, folder))
    size_mb = path.stat().st_size / 1e6
    print(f"{n} particles, {len(columns)} columns, {size_mb:.1f} MB")

    read_s, table = best_of(args.repeats, lambda: read_star(path, folder))
    write_s, _ = best_of(args.repeats, lambda: write_star(folder / "lorefine_out.star", table))
    same = (folder / "lorefine_out.star").read_text() == path.read_text()
    print(f"lorefine  read {read_s:6.2f} s (to a ParticleTable: radians, px, stack paths)   write {write_s:6.2f} s   "
          f"round trip byte-identical: {same}")
    try:
        import starfile
    except ImportError:
        print("starfile is not installed (pip install starfile)")
        return
    read_s, blocks = best_of(args.repeats, lambda: starfile.read(path, always_dict=True))
    write_s, _ = best_of(args.repeats, lambda: starfile.write(blocks, folder / "starfile_out.star", float_format="%.6f"))
    back = read_star(folder / "starfile_out.star", folder)
    kept = sum(a == b for a, b in zip(back.rows, table.rows))
    print(f"starfile  read {read_s:6.2f} s (to pandas DataFrames)                          write {write_s:6.2f} s   "
          f"rows with every value's text kept: {kept}/{n}")
    differ = next((j, a[j], b[j]) for a, b in zip(back.rows, table.rows) for j in range(len(a)) if a[j] != b[j]) if kept < n else None
    if differ:
        print(f"  e.g. column _{table.columns[differ[0]]}: {differ[2]!r} became {differ[1]!r}")


if __name__ == "__main__":
    main()
