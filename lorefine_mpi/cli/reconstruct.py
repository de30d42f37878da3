"""`lorefine reconstruct --particles X.star --out MAP.mrc`: weighted back-projection from a STAR file."""

import time

import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.io import mrc
from lorefine_mpi.io.files import check_output_file
from lorefine_mpi.io.star import read_star
from lorefine_mpi.projection.source import ParticleSource
from lorefine_mpi.reconstruction.backproject import BackProjector
from lorefine_mpi.reconstruction.reconstruct import backproject_all, backproject_into, distributed_half_maps, half_subsets, with_full
from lorefine_mpi.refine.cost import check_memory, reconstruction_bytes
from lorefine_mpi.refine.distributor import Distributor
from lorefine_mpi.refine.preflight import check_particle_values, check_stacks
from lorefine_mpi.refine.progress import ProgressLog

NAME = "reconstruct"
HELP = "reconstruct a map from a RELION STAR file by weighted back-projection (direct Fourier inversion)"


def add_arguments(parser):
    parser.add_argument("--particles", required=True, help="RELION STAR file (3.0 or 3.1)")
    parser.add_argument("--out", required=True, help="output map (MRC)")
    parser.add_argument("--half-maps", action="store_true", help="also write OUT_half1.mrc and OUT_half2.mrc (rlnRandomSubset)")
    parser.add_argument("--no-ctf", action="store_true", help="ignore the CTF even when the STAR file has defocus values")
    parser.add_argument("--project-dir", default=None,
                        help="RELION project directory that relative image names start from (default: the current directory)")
    parser.add_argument("--padding", type=int, default=2, choices=(1, 2, 3, 4), help="Fourier padding factor (default 2)")


def run(args) -> int:
    table = read_star(args.particles, args.project_dir)
    inputs = [args.particles, *dict.fromkeys(table.stack_path.tolist())]
    out = check_output_file("--out", args.out, inputs)
    halves = {h: out.with_name(f"{out.stem}_{h}{out.suffix}") for h in ("half1", "half2")} if args.half_maps else {}
    for path in halves.values():
        check_output_file("--half-maps", path, inputs)
    pixel = table.pixel_size_angstrom()
    if np.ptp(pixel) > 1e-3 * pixel[0]:
        raise InputError(f"{args.particles}: optics groups have different pixel sizes; expected one")
    _, box = check_stacks(table, args.particles)
    check_particle_values(table, args.particles, box, use_ctf=table.has_ctf and not args.no_ctf)
    check_memory(reconstruction_bytes(box, args.padding), "--padding", args.padding)
    started = time.time()
    tracker = ProgressLog("reconstruct: back-projection", len(table))
    progress = lambda done, total: tracker.add(done - tracker.done)  # noqa: E731
    source = ParticleSource(table, box, use_ctf=table.has_ctf and not args.no_ctf)
    if args.half_maps:  # the two halves (rlnRandomSubset), each reconstructed once; the full map is their mean
        subset = half_subsets(table)

        def backproject(half, accumulator):
            backproject_into(accumulator, source, np.nonzero(subset == half)[0])
            progress(int((subset <= half).sum()), len(table))

        maps = with_full(*distributed_half_maps(Distributor(), lambda: BackProjector(box, args.padding), backproject))
        for h, path in halves.items():
            mrc.write_map(path, maps[h], float(pixel[0]))
        full = maps["full"]
    else:  # one reconstruction from all particles, as relion_reconstruct
        full = backproject_all(source, np.arange(len(table)), padding=args.padding, progress=progress).reconstruct(consume=True)
    mrc.write_map(out, full, float(pixel[0]))
    print(f"lorefine reconstruct: wrote {out} from {len(table)} particles ({time.time() - started:.1f} s)")
    return 0
