"""`lorefine discover CONFIG.yaml [--continue]`: the rigid modules and their masks, proposed from the data (serial or
under MPI)."""

import logging
import shlex
import sys

from lorefine_mpi.errors import InputError

NAME = "discover"
HELP = "propose the rigid modules of the complex in CONFIG and their masks from the data (run it under mpiexec/srun for many ranks)"


def add_arguments(parser):
    parser.add_argument("config", help="the discover YAML config (configs/default_discover.yaml documents its keys)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="resume from OUTPUT/probe_search/results.h5: the probes' finished searches are kept")


def run(args) -> int:
    from lorefine_mpi.discover.config import load_discover_config
    from lorefine_mpi.discover.run import discover
    from lorefine_mpi.parallel.mpi import distributor

    dist = distributor()
    dist.check_slurm()
    root_logger = logging.getLogger()
    if not dist.is_root:
        root_logger.setLevel(logging.WARNING)
    for handler in root_logger.handlers:
        handler.setFormatter(dist.log_formatter())
    resume = f"lorefine discover {args.config} --continue"
    with dist.signal_handlers(), dist.guard(f"lorefine: stopped at once; finished work is saved. Resume with: {resume}",
                                            f"; finished work is saved, once this is fixed resume with: {resume}"):
        dcfg, error = None, None
        try:
            dcfg = load_discover_config(args.config)
        except InputError as e:
            error = e
        dist.agree_on_error(error)
        return discover(dcfg, dist, resume=args.resume, command_line=shlex.join(sys.argv))
