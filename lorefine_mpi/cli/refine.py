"""`lorefine refine CONFIG.yaml [--continue [auto]]`: LO-refinement of every module (serial or under MPI)."""

import logging
import shlex
import sys

from lorefine_mpi.config import load_config
from lorefine_mpi.errors import EXIT_STOPPED, InputError
from lorefine_mpi.io import relion_job
from lorefine_mpi.refine import layout

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
    from lorefine_mpi.parallel.mpi import distributor
    from lorefine_mpi.refine.recorder import Recorder
    from lorefine_mpi.refine.run import refine
    from lorefine_mpi.report.html import write_report

    dist = distributor()  # one process without an MPI launcher (mpi4py is then never imported), MPI's under one
    dist.check_slurm()
    root_logger = logging.getLogger()
    if not dist.is_root:
        root_logger.setLevel(logging.WARNING)
    for handler in root_logger.handlers:
        handler.setFormatter(dist.log_formatter())
    resume = f"lorefine refine {args.config} --continue"
    stopped = f"lorefine: stopped at once; finished work is saved. Resume with: {resume}"
    with dist.signal_handlers(), dist.guard(stopped, f"; finished work is saved, once this is fixed resume with: {resume}"):
        cfg, error = None, None
        try:
            cfg = load_config(args.config)
        except InputError as e:
            error = e
        checkpoint = None if cfg is None else layout.RunFolder.of(cfg).results
        if cfg is not None and args.resume == "yes" and not checkpoint.exists():
            error = InputError(f"--continue: no checkpoint {checkpoint} to resume "
                               "(start without --continue, or use --continue auto)")
        dist.agree_on_error(error)  # every rank reads the config; the message is printed once
        recorder = Recorder(cfg, dist, command_line=shlex.join(sys.argv), resume=args.resume != "no")
        try:
            status = refine(cfg, dist, recorder, write_report)
        except KeyboardInterrupt:  # stopped at once (a second Ctrl-C): resumable, no end marker
            raise
        except BaseException:
            _end_relion_job(dist, recorder, succeeded=False)
            raise
        if status != EXIT_STOPPED:  # a run stopped by a signal is resumable: no marker, as a RELION job killed by one
            _end_relion_job(dist, recorder, succeeded=status == 0)
        return status


def _end_relion_job(dist, recorder, succeeded: bool) -> None:
    """Rank 0, when this run held the output folder: RELION_JOB_EXIT_SUCCESS or _FAILURE in it (`io.relion_job`), which
    RELION's GUI reads. (An error on another rank ends every rank through the MPI layer before this; the folder then
    has no marker, as a RELION job whose process was killed.)"""
    if dist.is_root and recorder.holds_folder:
        try:
            relion_job.end(layout.RunFolder.of(recorder.cfg).job, succeeded)
        except OSError:
            pass  # the file system failed: the run's own error says so
