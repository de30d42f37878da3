"""`lorefine check CONFIG.yaml`: validate the config and its inputs, without computing."""

from lorefine_mpi.config import load_config
from lorefine_mpi.config.check import check_inputs

NAME = "check"
HELP = "validate a config and its input files (STAR, stacks, map, masks) before a run"


def add_arguments(parser):
    parser.add_argument("config", help="the run's YAML config")


def run(args) -> int:
    cfg = load_config(args.config)
    summary = check_inputs(cfg)
    print(f"lorefine check: {args.config} is ready to run")
    for line in summary.lines(cfg):
        print("  " + line)
    return 0
