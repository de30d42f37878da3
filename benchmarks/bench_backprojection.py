"""Back-projection and projection throughput at 128² on one core.

    python benchmarks/bench_backprojection.py [--box 128] [--images 256]
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from lorefine_mpi.geometry import rotations  # noqa: E402
from lorefine_mpi.projection import ctf, fourier  # noqa: E402
from lorefine_mpi.reconstruction.backproject import BackProjector  # noqa: E402
from lorefine_mpi.simulate.phantoms import make_phantom  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--images", type=int, default=256)
    args = p.parse_args()
    box, n = args.box, args.images
    rng = np.random.default_rng(0)
    ph = make_phantom(box, 11, n_atoms_large=1500)
    t0 = time.process_time()
    fvol = fourier.prepare_volume(ph.module_maps[0] + ph.module_maps[1], 2)
    t_prep = time.process_time() - t0
    a = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, n)))
    o = rng.normal(0, 2, (n, 2))
    c = ctf.ctf_2d(box, 2.0, rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), 0.3, 300, 2.7, 0.1)
    t0 = time.process_time()
    images = fourier.project(fvol, a, o, ctf=c)
    t_proj = time.process_time() - t0
    bp = BackProjector(box, 2)
    t0 = time.process_time()
    bp.insert(images, a, c, o)
    t_bp = time.process_time() - t0
    t0 = time.process_time()
    bp.reconstruct()
    t_rec = time.process_time() - t0
    print(f"box {box}, padding 2 ({2 * box}³ padded transform), one core, CPU time")
    print(f"  prepare volume (gridding correction, pad, FFT): {t_prep:.2f} s")
    print(f"  projection with CTF and origin: {n / t_proj:.0f} images/s ({1000 * t_proj / n:.2f} ms each)")
    print(f"  back-projection with CTF: {n / t_bp:.0f} particles/s ({1000 * t_bp / n:.2f} ms each)")
    print(f"  final weighting (10 gridding iterations), inverse FFT, gridding correction: {t_rec:.2f} s")


if __name__ == "__main__":
    main()
