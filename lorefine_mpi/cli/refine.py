"""`lorefine refine CONFIG.yaml [--continue [auto]]`: LO-refinement of every module (serial or under MPI)."""

import logging
import shlex
import sys
from pathlib import Path

from lorefine_mpi.config import load_config
from lorefine_mpi.errors import InputError

NAME = "refine"
HELP = "LO-refinement of the modules in CONFIG (run it under mpiexec/srun for many ranks)"


def add_arguments(parser):
    parser.add_argument("config", help="the run's YAML config")
    parser.add_argument("--continue", dest="resume", nargs="?", const="yes", default="no", choices=("yes", "auto"),
                        metavar="auto",
                        help="resume from OUTPUT/results.h5: finished work units are kept, the rest is done; "
                             "'--continue auto' resumes when the checkpoint is there and starts afresh when it is not "
                             "(what a requeued Slurm job runs)")


def run(args) -> int:
    from lorefine_mpi.parallel.context import ParallelContext, world_communicator
    from lorefine_mpi.parallel.driver import Driver

    ctx = ParallelContext(world_communicator())
    ctx.check_slurm()
    root_logger = logging.getLogger()
    if not ctx.is_root:
        root_logger.setLevel(logging.WARNING)
    for handler in root_logger.handlers:
        handler.setFormatter(ctx.log_formatter())
    resume = f"lorefine refine {args.config} --continue"
    stopped = f"lorefine: stopped at once; finished work is saved. Resume with: {resume}"
    with ctx.signal_handlers(), ctx.guard(stopped, f"; finished work is saved, once this is fixed resume with: {resume}"):
        cfg, error = None, None
        try:
            cfg = load_config(args.config)
        except InputError as e:
            error = e
        if cfg is not None and args.resume == "yes" and not (Path(cfg.output) / "results.h5").exists():
            error = InputError(f"--continue: no checkpoint {Path(cfg.output) / 'results.h5'} to resume "
                               "(start without --continue, or use --continue auto)")
        ctx.agree_on_error(error)  # every rank reads the config; the message is printed once
        return Driver(cfg, ctx, command_line=shlex.join(sys.argv), resume=args.resume != "no").run()
