"""Local resolution of a simulated map whose two modules are blurred by different B-factors: the median
local resolution in each module's mask, and the time on one core.

    python benchmarks/bench_locres.py [--box 128] [--voxel 2.0] [--bfactors 50 400] [--noise 1.0]

The built-in phantom (two modules of pseudo-atoms) at the given box; module k is blurred by exp(-B_k s²/4)
in Fourier space; each half map is the sum plus independent white noise (σ = noise × the blurred map's
standard deviation). Local resolution with the defaults of `lorefine refine` (RELION's --locres: flat
12.5 Å, edge 25 Å, step 25 Å) or the window given, near the two masks, on one rank. CPU time (one core).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from lorefine_mpi.refine.distributor import Distributor  # noqa: E402
from lorefine_mpi.simulate.phantoms import make_phantom  # noqa: E402
from lorefine_mpi.validation import fsc as fsc_mod  # noqa: E402
from lorefine_mpi.validation import locres  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--voxel", type=float, default=2.0, help="Å per voxel")
    p.add_argument("--bfactors", type=float, nargs=2, default=(50.0, 400.0), help="B of module 1 and module 2, Å²")
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--radius", type=float, default=12.5)
    p.add_argument("--edge", type=float, default=25.0)
    p.add_argument("--step", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    n, voxel = args.box, args.voxel
    phantom = make_phantom(n, 11)
    s2 = fsc_mod.frequency_radius_sq(n) / (n * voxel) ** 2
    structure = sum(np.fft.irfftn(np.fft.rfftn(m) * np.exp(-b * s2 / 4), s=(n,) * 3, axes=(0, 1, 2))
                    for m, b in zip(phantom.module_maps, args.bfactors))
    rng = np.random.default_rng(args.seed)
    sd = args.noise * structure.std()
    h1, h2 = structure + rng.normal(size=structure.shape) * sd, structure + rng.normal(size=structure.shape) * sd
    settings = locres.LocresSettings(args.radius, args.edge, args.step)
    support = np.clip(sum(phantom.masks), 0, 1)
    wall, cpu = time.time(), time.process_time()
    result = locres.local_resolution(Distributor(), h1, h2, voxel, settings, support=support, seed=args.seed)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    print(f"{n}³ map at {voxel:g} Å/voxel, module B-factors {args.bfactors[0]:g} and {args.bfactors[1]:g} Å², noise {args.noise:g}")
    print(f"window: flat {settings.radius_angstrom:g} Å, edge {settings.edge_angstrom:g} Å, step {settings.step_angstrom:g} Å "
          f"-> {len(result.centres_px)} windows of {result.window_box} px")
    for k, (mask, b) in enumerate(zip(phantom.masks, args.bfactors), 1):
        values = result.map_angstrom[(mask > 0.5) & (result.map_angstrom > 0)]
        print(f"module {k} (B = {b:g} Å²): median local resolution {np.median(values):.2f} Å "
              f"(5-95 %: {np.percentile(values, 5):.2f}-{np.percentile(values, 95):.2f} Å)")
    print(f"time on one core: {cpu:.1f} s CPU ({wall:.1f} s wall)")


if __name__ == "__main__":
    main()
