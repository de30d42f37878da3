"""`lorefine report OUT/`: (re)build OUT/report.html from what `lorefine refine` wrote into OUT."""

NAME = "report"
HELP = "write OUT/report.html: one self-contained page with each module's FSC, post-processing, local resolution, motion, timings, config"


def add_arguments(parser):
    parser.add_argument("output", help="the output folder of lorefine refine")


def run(args) -> int:
    from lorefine_mpi.refine import layout
    from lorefine_mpi.refine.preflight import check_run_outputs
    from lorefine_mpi.report.html import write_report

    check_run_outputs("output", args.output, [layout.RunFolder(args.output, 1).report])
    print(f"lorefine report: wrote {write_report(args.output)}")
    return 0
