"""`lorefine subtract OUTPUT --module NAME [--box-px N]`: a module's particles with the rest subtracted."""

from pathlib import Path

from lorefine_mpi.refine.preflight import check_run_outputs
from lorefine_mpi.refine.subtracted import FILES, write_subtracted

NAME = "subtract"
HELP = ("from a finished run: a module's particles with the other modules subtracted (CTF, fitted k), recentred on "
        "the module and optionally re-boxed, with their STAR file for relion_refine or relion_reconstruct")


def add_arguments(parser):
    parser.add_argument("output", help="the output folder of a finished lorefine refine run")
    parser.add_argument("--module", action="append", required=True, help="module name (repeat for several)")
    parser.add_argument("--box-px", type=int, default=None, help="cut the images to this even box around the module (default: keep the box)")


def run(args) -> int:
    names = list(dict.fromkeys(args.module))
    check_run_outputs("output", args.output, [Path(args.output) / name / f for name in names for f in FILES])
    for name in names:
        star = write_subtracted(args.output, name, box_px=args.box_px)
        print(f"lorefine subtract: wrote {star} and {star.with_suffix('.mrcs').name}")
    return 0
