"""Back-projection and projection throughput at 128² on one core, and the reconstruction's CPU and memory; and
`lorefine reconstruct` against `relion_reconstruct` on the same STAR file.

    python benchmarks/bench_backprojection.py [--box 128] [--images 256]
    python benchmarks/bench_backprojection.py --star particles.star [--ctf]

With ``--star``: runs both programs on the file (one thread each, the full map from every particle, the CTF
corrected with ``--ctf``: `relion_reconstruct --ctf`, lorefine's default when the file has defocus values;
without it both ignore the CTF) and prints each one's CPU seconds (user + sys of the process: reading,
back-projection, the final weighting and inversion, writing), particles per CPU second, peak RSS, and the
FSC between the two maps (its lowest value up to 0.8 × Nyquist).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lorefine_mpi.geometry import rotations  # noqa: E402
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star  # noqa: E402
from lorefine_mpi.projection import ctf, fourier  # noqa: E402
from lorefine_mpi.reconstruction.backproject import BackProjector  # noqa: E402
from lorefine_mpi.simulate.phantoms import make_phantom  # noqa: E402
from lorefine_mpi.validation import fsc  # noqa: E402


def timed(command, cwd) -> tuple[float, float]:
    """(CPU seconds user + sys, peak RSS MiB) of one process run to its end."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{command[0]} failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def peak_rss_mib(reset: bool = False) -> float:
    """This process's peak resident set (VmHWM, MiB) since the start or the last reset; ``reset``: start it again from
    the current resident set (Linux: ``/proc/self/clear_refs``)."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) / 1024


def against_relion(star: Path, use_ctf: bool) -> None:
    relion = shutil.which("relion_reconstruct")
    if relion is None:
        raise SystemExit("relion_reconstruct is not installed (apt-get install relion)")
    n = len(read_star(star))
    work = Path(tempfile.mkdtemp(prefix="lorefine_bp_"))
    lorefine = Path(sys.executable).parent / "lorefine"
    ours = [str(lorefine), "reconstruct", "--particles", str(star), "--out", str(work / "lorefine.mrc")] + ([] if use_ctf else ["--no-ctf"])
    theirs = [relion, "--i", str(star), "--o", str(work / "relion.mrc")] + (["--ctf"] if use_ctf else [])
    figures = {"lorefine": timed(ours, star.parent), "relion_reconstruct": timed(theirs, star.parent)}
    print(f"{star} ({n} particles, CTF {'corrected' if use_ctf else 'ignored'}), one thread, whole map")
    for name, (cpu_s, rss_mib) in figures.items():
        print(f"  {name:19} {cpu_s:7.1f} s CPU  {n / cpu_s:6.1f} particles/s  peak RSS {rss_mib:6.0f} MiB")
    a, voxel = mrc.read_map(work / "lorefine.mrc")
    b, _ = mrc.read_map(work / "relion.mrc")
    curve = fsc.fsc(a, b, voxel)
    upto = int(0.8 * (a.shape[0] // 2))
    print(f"  FSC(lorefine, relion_reconstruct): lowest {np.min(curve.fsc[1 : upto + 1]):.4f} up to 0.8 × Nyquist; "
          f"throughput ratio {figures['relion_reconstruct'][0] / figures['lorefine'][0]:.2f}")
    shutil.rmtree(work)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--star", type=Path, help="compare lorefine reconstruct with relion_reconstruct on this STAR file")
    p.add_argument("--ctf", action="store_true", help="with --star: correct the CTF (both programs)")
    args = p.parse_args()
    if args.star:
        return against_relion(args.star.resolve(), args.ctf)
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
    del fvol, images, c
    accumulators_mib = (bp.data.nbytes + bp.weight.nbytes) / 2**20
    rss_before = peak_rss_mib(reset=True)
    t0 = time.process_time()
    bp.reconstruct(consume=True)
    t_rec = time.process_time() - t0
    rss_after = peak_rss_mib()
    print(f"box {box}, padding 2 ({2 * box}³ padded transform), one core, CPU time")
    print(f"  prepare volume (gridding correction, pad, FFT): {t_prep:.2f} s")
    print(f"  projection with CTF and origin: {n / t_proj:.0f} images/s ({1000 * t_proj / n:.2f} ms each)")
    print(f"  back-projection with CTF: {n / t_bp:.0f} particles/s ({1000 * t_bp / n:.2f} ms each)")
    print(f"  final weighting (10 gridding iterations), inverse FFT, gridding correction: {t_rec:.2f} s")
    print(f"  memory: accumulators {accumulators_mib:.0f} MiB (double precision); resident {rss_before:.0f} MiB before the "
          f"reconstruction, peak {rss_after:.0f} MiB during it (+{rss_after - rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
