"""ms per particle per module of the local search at 128² with the paper's ranges (one core).

    python benchmarks/bench_search.py [--box 128] [--particles 64] [--strategy separate|simultaneous] [--ctf] [--prior auto|none] [--repeats 5]
                                      [--whole-run-particles 2000]

A unit of P particles from one projection class (directions within 3° of each other, random ψ), the
paper's search: cone 10°, 2° steps, ψ ±6° in 2° steps, shifts ±4 px in 1 px steps, round mask of 40 px
(scaled with the box), with lorefine's default prior (``auto``: a third of the cone and of the shift range)
or none (the paper). Prints the time of the unit's shared reference projections and the search's per particle (best and median of
--repeats runs), and what one particle's search computes: the working box and mask pixels J, the patches
sampled (turned and shifted images over the mask: bilinear, ~20 flops per sample) and the score's matrix
products (2 flops per multiply-add), counted at the kernel seam.

One unit of many particles sharing their references is the best case: beside it, what a user's whole
`lorefine refine` costs at the same box, strategy and CTF (`bench_refine.py` on ``--whole-run-particles``
simulated particles, every stage and output; 0 to skip).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

from lorefine_mpi.config.schema import ReconstructionConfig, ScoreConfig, SearchConfig  # noqa: E402
from lorefine_mpi.geometry import (  # noqa: E402
    candidates,
    rotations,
    volumes,  # noqa: E402
)
from lorefine_mpi.kernels import backend  # noqa: E402
from lorefine_mpi.projection import ctf as ctf_model  # noqa: E402
from lorefine_mpi.projection import fourier  # noqa: E402
from lorefine_mpi.refine.engine import search_settings  # noqa: E402
from lorefine_mpi.search import local  # noqa: E402
from lorefine_mpi.simulate.phantoms import make_phantom  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--particles", type=int, default=64)
    p.add_argument("--strategy", default="separate", choices=("separate", "simultaneous"))
    p.add_argument("--ctf", action="store_true")
    p.add_argument("--prior", default="auto", choices=("auto", "none"))
    p.add_argument("--repeats", type=int, default=5, help="time the search this many times; print the best and the median")
    p.add_argument("--whole-run-particles", type=int, default=2000, help="then a whole run of this many particles (bench_refine.py); 0: none")
    args = p.parse_args()
    n, box = args.particles, args.box
    rng = np.random.default_rng(0)
    phantom = make_phantom(box, 11, n_atoms_large=1500)
    fvol = fourier.prepare_volume(volumes.recentre(phantom.module_maps[1], phantom.centres_px[1]), 2)
    centre_dir = np.array([0.3, 0.5, np.sqrt(1 - 0.34)])
    jitter = rotations.rotation_about_axis(rng.normal(size=(n, 3)), np.deg2rad(rng.uniform(0, 3, n)))
    dirs = np.einsum("nij,j->ni", jitter, centre_dir)
    frames = local.canonical_frames(dirs)
    a0 = rotations.inplane_rotation(rng.uniform(-np.pi, np.pi, n)) @ frames
    truth = a0 @ rotations.rotation_about_axis(rng.normal(size=(n, 3)), np.deg2rad(rng.normal(0, 1.67, n)))
    o0 = rng.normal(0, 1, (n, 2))
    ctf = None
    if args.ctf:
        du = rng.uniform(1e4, 3e4, n)
        ctf_all = ctf_model.ctf_2d(box, 2.0, du, du - 200, 0.3, 200, 2.0, 0.07)
        ctf = lambda rows, extra, pixels=None: ctf_model.ctf_2d(box, 2.0, du[rows], du[rows] - 200, 0.3 + extra, 200, 2.0, 0.07, pixels=pixels)  # noqa: E731
    images = fourier.project(fvol, truth, o0 + rng.normal(0, 1, (n, 2)), ctf=None if ctf is None else ctf_all)
    images = fourier.to_fourier(fourier.to_real(images, box) + rng.normal(0, 1, (n, box, box)).astype(np.float32) * 2)
    prior = None if args.prior == "none" else "auto"
    search = SearchConfig(strategy=args.strategy, mask_diameter_px=40 * box / 128, prior_sigma_deg=prior, prior_sigma_px=prior)
    # SearchConfig's and ScoreConfig's defaults are the paper's ranges and the subtract mode; no module mask is
    # needed with the mask diameter given; ReconstructionConfig's default keeps the posterior poses a run keeps
    settings = search_settings(SimpleNamespace(search=search, score=ScoreConfig(), reconstruction=ReconstructionConfig()), None, None, box)
    searcher = local.UnitSearch(fvol, candidates.direction_grid(np.deg2rad(2)), settings, box)
    unit = local.UnitInput(images, a0, o0, ctf, None, np.arange(n))
    t0 = time.process_time()
    ids = local.unit_directions(searcher.directions, a0, settings.cone_half_angle_rad)
    fourier.project(fvol, local.canonical_frames(searcher.directions[ids]))
    t_refs = time.process_time() - t0
    times = []
    for _ in range(args.repeats):  # this virtual machine's CPU time varies by tens of per cent between runs
        t0 = time.process_time()
        result = searcher.run(unit)
        times.append(time.process_time() - t0)
    total = min(times)
    err = np.rad2deg(rotations.geodesic_angle(result.matrix, truth))
    print(f"box {box}, {n} particles in one projection class, {args.strategy}, ctf={'yes' if args.ctf else 'no'}, prior {args.prior}, one core")
    print(f"  unit reference projections: {len(ids)} directions, {1000 * t_refs:.1f} ms for the unit ({1000 * t_refs / n:.2f} ms per particle)")
    print(f"  search: {1000 * total / n:.1f} ms per particle per module (CPU time, best of {args.repeats}; "
          f"median {1000 * np.median(times) / n:.1f})")
    print(f"  median angular error vs truth {np.median(err):.2f}° (noisy test images)")
    counts = count_work(searcher, unit)
    flops = 20 * counts["samples"] + counts["product_flops"]
    print(f"  per particle: working box {searcher.work.size}², J = {searcher.work.n_pixels} mask pixels; "
          f"{counts['samples'] / n / 1e6:.2f} M patch samples, {counts['product_flops'] / n / 1e6:.1f} M flops of matrix products; "
          f"≈ {flops / n / 1e6:.0f} Mflop in all = {flops / total / 1e9:.2f} Gflop/s at the time above")
    if args.whole_run_particles:
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_refine

        print(f"beside it, a whole `lorefine refine` (bench_refine.py, {args.whole_run_particles} particles):", flush=True)
        bench_refine.main(["--particles", str(args.whole_run_particles), "--box", str(box), "--strategies", args.strategy]
                          + (["--ctf"] if args.ctf else []))


def count_work(searcher, unit) -> dict:
    """Patch samples and matrix-product flops of one run of the unit, counted at the kernel seam."""
    kernels = backend()
    counts = {"samples": 0, "product_flops": 0}
    sample, sample_grid, correlate = kernels.sample_patches, kernels.sample_shift_grid, kernels.correlate

    def counted_sample(upsampled, zx, zy, angles_rad, shifts_px, factor=2):
        counts["samples"] += np.size(angles_rad) * len(zx)
        return sample(upsampled, zx, zy, angles_rad, shifts_px, factor)

    def counted_sample_grid(upsampled, zx, zy, angles_rad, steps, factor):
        counts["samples"] += np.size(angles_rad) * len(steps) * len(zx)
        return sample_grid(upsampled, zx, zy, angles_rad, steps, factor)

    def counted_correlate(patches, templates):
        counts["product_flops"] += 2 * patches.shape[0] * templates.shape[0] * patches.shape[1]
        return correlate(patches, templates)

    kernels.sample_patches, kernels.sample_shift_grid, kernels.correlate = counted_sample, counted_sample_grid, counted_correlate
    try:
        searcher.run(unit)
    finally:
        del kernels.sample_patches, kernels.sample_shift_grid, kernels.correlate
    return counts


if __name__ == "__main__":
    main()
