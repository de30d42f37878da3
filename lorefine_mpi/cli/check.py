"""`lorefine check CONFIG.yaml [--continue] [--nodes N --ranks-per-node R] [--slurm]`: validate the config, its inputs
and its output folder, without computing: the validation `lorefine refine` does first (`refine.preflight.check_run`);
then what the run will cost on a cluster (`refine.cost_model`: CPU core-hours, wall time, peak memory per rank and per
node), for the layout named (default: 1 node × 1, 16 and 64 ranks).

``--slurm`` prints nothing but the sbatch options for that layout (one line), so that a job asks for what the model
says: ``sbatch $(lorefine check CONFIG.yaml --nodes 8 --ranks-per-node 64 --slurm) slurm/refine.sbatch CONFIG.yaml``."""

import argparse
import sys

from lorefine_mpi.config import load_config
from lorefine_mpi.errors import InputError
from lorefine_mpi.refine import cost_model
from lorefine_mpi.refine.preflight import check_run

NAME = "check"
HELP = "validate a config, its input files (STAR, stacks, map, masks) and its output folder before a run; print its cost"
MAX_NODES = 100_000
MAX_RANKS_PER_NODE = 4096


def _count(largest: int):
    def parse(text: str) -> int:
        if not (text.isdigit() and 1 <= int(text) <= largest):
            raise argparse.ArgumentTypeError(f"expected a whole number in [1, {largest}], got {text!r}")
        return int(text)

    return parse


def add_arguments(parser):
    parser.add_argument("config", help="the run's YAML config")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="check that OUTPUT/results.h5 can be resumed with this config (as refine --continue)")
    parser.add_argument("--nodes", type=_count(MAX_NODES), metavar="N",
                        help="the cost for this many nodes (default 1; with neither this nor --ranks-per-node: 1 × 1, 16 and 64 ranks)")
    parser.add_argument("--ranks-per-node", type=_count(MAX_RANKS_PER_NODE), metavar="R", help="MPI ranks per node (default 1)")
    parser.add_argument("--slurm", action="store_true",
                        help="print only the sbatch options for the layout (--nodes, --ntasks-per-node, --mem-per-cpu, --time)")


def run(args) -> int:
    named = args.nodes is not None or args.ranks_per_node is not None
    if args.slurm and not named:
        raise InputError("--slurm: name the layout too (--nodes N --ranks-per-node R)")
    layouts = [(args.nodes or 1, args.ranks_per_node or 1)] if named else list(cost_model.DEFAULT_LAYOUTS)
    cfg = load_config(args.config)
    summary = check_run(cfg, args.resume)
    if args.slurm:  # stdout is the options alone (for $(...)); the warnings go to stderr
        for line in dict.fromkeys(summary.warnings):
            sys.stderr.write(f"lorefine: warning: {line}\n")
        nodes, per_node = layouts[0]
        print(cost_model.slurm_request(cost_model.estimate(cost_model.run_shape(cfg, summary, nodes=nodes, ranks_per_node=per_node))))
        return 0
    print(f"lorefine check: {args.config} is ready to {'continue' if args.resume else 'run'}")
    for line in summary.lines(cfg) + summary.cost.lines() + cost_model.summary_lines(cfg, summary, layouts):
        print("  " + line)
    for line in dict.fromkeys(summary.warnings):
        print(f"  warning: {line}")
    return 0

