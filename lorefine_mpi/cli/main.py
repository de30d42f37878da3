"""`lorefine` command line: one subcommand per module in this package.

A subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
A user's mistake (`InputError`) becomes one line on stderr and exit status 2; logging is set up
here and nowhere else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
MAX_THREADS = 1024


def threads_option(argv) -> int | None:
    """The value of ``--j N`` (or ``--j=N``) in a command line when it is a valid thread count, else None (a wrong
    value is refused later, by the parser, with the usual one-line message)."""
    for i, token in enumerate(argv):
        text = argv[i + 1] if token == "--j" and i + 1 < len(argv) else token[4:] if token.startswith("--j=") else None
        if text is not None:
            return int(text) if text.isdigit() and 1 <= int(text) <= MAX_THREADS else None
    return None


def set_threads(argv, environ=os.environ) -> None:
    """Threads per process for the BLAS (OpenBLAS, MKL), OpenMP and numba, set before numpy loads (they read these
    once). ``--j N``: N threads, whatever the environment says. Without it, under MPI every rank is one core's worth
    of work: one thread per rank unless the user's environment says otherwise (several threaded ranks on one node
    oversubscribe its cores); in one process the libraries' own defaults (all cores)."""
    threads = threads_option(argv)
    if threads is not None:
        for var in THREAD_VARIABLES:
            environ[var] = str(threads)
    elif any(int(environ.get(v, "1") or 1) > 1 for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")):
        for var in THREAD_VARIABLES:
            environ.setdefault(var, "1")


set_threads(sys.argv[1:])

from lorefine_mpi import __version__
from lorefine_mpi.errors import EXIT_CLOSED_PIPE, EXIT_INPUT_ERROR, EXIT_STOPPED, InputError, describe_os_error
from lorefine_mpi.process_memory import keep_freed_memory


def _subcommand_modules():
    package = importlib.import_module("lorefine_mpi.cli")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lorefine_mpi.cli.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            yield module


def _launcher_rank() -> int:
    """This process's rank as the MPI launcher or srun set it (0 without one); known before MPI starts."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line with exit status 2 (printed by rank 0 only)."""

    def error(self, message):
        if _launcher_rank() == 0:
            sys.stderr.write(f"lorefine: error: {message} (see 'lorefine --help')\n")
        sys.exit(EXIT_INPUT_ERROR)


def _thread_count(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= MAX_THREADS):
        raise argparse.ArgumentTypeError(f"expected a whole number of threads in [1, {MAX_THREADS}], got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lorefine",
        description="Local optimization refinement (LO-refinement) of the rigid modules of a "
        "flexible complex in cryo-EM, MPI-parallel.",
    )
    parser.add_argument("--version", action="version", version=f"lorefine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _subcommand_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument("--j", type=_thread_count, default=None, metavar="N",
                       help="threads per process (per MPI rank) for the BLAS, OpenMP and numba (default: 1 per rank under "
                            "MPI, the libraries' own in one process); ranks × N should not exceed a node's cores")
        p.set_defaults(_run=module.run)
    return parser


# What a terminal that cannot show lorefine's few non-ASCII characters gets instead (`ascii_fallback`)
_ASCII = {"Å": "A", "²": "^2", "³": "^3", "°": " deg", "×": "x", "±": "+/-", "–": "-", "—": "-", "…": "...", "→": "->", "≤": "<=",
          "≥": ">=", "≈": "~", "µ": "u", "·": "*", "ψ": "psi", "σ": "sigma", "ρ": "rho", "θ": "theta", "φ": "phi", "α": "alpha",
          "−": "-", "’": "'", "‘": "'", "“": '"', "”": '"'}


def _ascii_replacement(error):
    text = error.object[error.start:error.end]
    return "".join(_ASCII.get(c, "?") for c in text), error.end


def ascii_fallback() -> None:
    """stdout and stderr that cannot encode "Å" (a POSIX locale, PYTHONIOENCODING=ascii) write ASCII stand-ins instead
    of failing with UnicodeEncodeError."""
    import codecs

    codecs.register_error("lorefine_ascii", _ascii_replacement)
    for stream in (sys.stdout, sys.stderr):
        try:
            "Å°²×".encode(stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors="lorefine_ascii")


def main(argv=None) -> int:
    ascii_fallback()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_INPUT_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    keep_freed_memory()
    try:
        status = int(args._run(args) or 0)
        sys.stdout.flush()  # here, so that a reader that went away (`lorefine check … | head -1`) is seen below
        return status
    except BrokenPipeError:
        return closed_pipe()
    except InputError as error:
        if not error.quiet:
            sys.stderr.write(f"lorefine: error: {error}\n")
        return EXIT_INPUT_ERROR
    except OSError as error:  # the file system failed: a full disk, a lost mount, a folder that cannot be written
        sys.stderr.write(f"lorefine: error: {describe_os_error(error)}\n")
        return EXIT_INPUT_ERROR
    except MemoryError:  # what `refine.cost` bounds from below still did not fit (other programs hold memory too)
        sys.stderr.write("lorefine: error: out of memory: this command needs more than the machine gave it (lorefine check prints a lower "
                         "bound of a run's needs); free memory, or use smaller settings\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("lorefine: interrupted (Ctrl-C)\n")
        return EXIT_STOPPED


def closed_pipe() -> int:
    """The reader of stdout went away (``lorefine check … | head -1``): stop quietly, as a program killed by SIGPIPE
    does (status 128 + 13 = 141), with stdout pointed at /dev/null so that nothing complains at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
