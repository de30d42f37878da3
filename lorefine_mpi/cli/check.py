"""`lorefine check CONFIG.yaml [--continue]`: validate the config, its inputs and its output folder, without
computing: the validation `lorefine refine` does first (`refine.preflight.check_run`)."""

from lorefine_mpi.config import load_config
from lorefine_mpi.refine.preflight import check_run

NAME = "check"
HELP = "validate a config, its input files (STAR, stacks, map, masks) and its output folder before a run"


def add_arguments(parser):
    parser.add_argument("config", help="the run's YAML config")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="check that OUTPUT/results.h5 can be resumed with this config (as refine --continue)")


def run(args) -> int:
    cfg = load_config(args.config)
    summary = check_run(cfg, args.resume)
    print(f"lorefine check: {args.config} is ready to {'continue' if args.resume else 'run'}")
    for line in summary.lines(cfg) + summary.cost.lines():
        print("  " + line)
    for line in dict.fromkeys(summary.warnings):
        print(f"  warning: {line}")
    return 0
