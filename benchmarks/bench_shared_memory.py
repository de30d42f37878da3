"""Per-rank memory with node-shared reference volumes: 1 and 3 ranks, a 128³ map (256³ padded transform).

    python benchmarks/bench_shared_memory.py            # launches mpiexec -n 1 and -n 3 of itself

Each rank maps the padded half transform (256 × 256 × 129 complex64, 68 MB) that the node leader computed
into MPI shared memory, touches all of it, and reports RssAnon (private) and RssShmem (shared pages it
maps) from /proc/self/status. Extra ranks must not each hold a private copy.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure():
    import numpy as np
    from mpi4py import MPI

    from lorefine_mpi.parallel.mpi import MPIDistributor
    from lorefine_mpi.parallel.shared import SharedArray
    from lorefine_mpi.projection import fourier

    ctx = MPIDistributor(MPI.COMM_WORLD)
    box = 128
    base_anon = status_kb("RssAnon")
    volume = np.random.default_rng(0).normal(size=(box, box, box)).astype(np.float32) if ctx.is_node_leader else None
    shared = SharedArray(ctx, fourier.band_shape(box, 2), np.complex64, lambda out: fourier.prepare_volume(volume, 2, out=out))
    checksum = float(np.abs(shared.array[::7, ::7, ::7]).sum()) + float(shared.array.real.sum())  # touch every page
    import gc

    gc.collect()
    row = (ctx.rank, (status_kb("RssAnon") - base_anon) / 1024, status_kb("RssShmem") / 1024, shared.array.nbytes / 2**20, checksum)
    rows = MPI.COMM_WORLD.gather(row)
    if ctx.is_root:
        copy = rows[0][3]
        print(f"{ctx.size} rank(s); one copy of the padded transform = {copy:.1f} MiB")
        for rank, anon, shmem, _, _ in rows:
            print(f"  rank {rank}: extra RssAnon {anon:7.1f} MiB, RssShmem {shmem:7.1f} MiB")
        extra = [anon for rank, anon, *_ in rows if rank != 0]
        if extra:
            print(f"  non-leader ranks: extra private memory {max(extra):.1f} MiB = {100 * max(extra) / copy:.1f} % of one copy")
    shared.free()


def main():
    if os.environ.get("PMI_RANK") is not None or os.environ.get("OMPI_COMM_WORLD_RANK") is not None:
        measure()
        return
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    for n in (1, 3):
        subprocess.run([mpiexec, "-n", str(n), sys.executable, "-m", "mpi4py", __file__], check=True)


if __name__ == "__main__":
    main()
