"""What a `lorefine refine` run writes in its output folder, and where: every path of a run folder is made here
(`RunFolder`), so the folder checks know every place the run would write (`refine.preflight.check_output`).

    results.h5, config.yaml, lorefine.log, .lorefine.lock (while a run holds the folder)
    combined.mrc, summary.json, timings.json, report.html, bodies.star (the modules as RELION multi-body bodies)
    note.txt, RELION_JOB_EXIT_SUCCESS / _FAILURE   the folder as a RELION job (`io.relion_job`; not outputs: a RELION
                            job folder made by RELION's GUI holds a note.txt before the run starts)
    MODULE/                 the module's maps, STAR file, FSC, post-processing, local resolution, subtracted particles
    consensus/              the consensus poses' half maps
    motion/                 the modules' motion (post-processing)
    iteration_NN/           every iteration but the last: MODULE/ and combined.mrc
The run owns these folders whole: a file in one of them is one the run may write.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = "results.h5"
CONFIG = "config.yaml"
LOG = "lorefine.log"
LOCK = ".lorefine.lock"
CONSENSUS_FOLDER = "consensus"
MOTION_FOLDER = "motion"
COMBINED = "combined.mrc"
SUMMARY = "summary.json"
TIMINGS = "timings.json"
REPORT = "report.html"
BODIES = "bodies.star"
TOP_FILES = (RESULTS, CONFIG, LOG, COMBINED, SUMMARY, TIMINGS, REPORT, BODIES)
_ITERATION_FOLDER = re.compile(r"iteration_\d+")


def reserved_module_name(name: str) -> str | None:
    """Why a module may not have this name (its folder would be one of the run's own, also on a file system that
    ignores case), or None when it may."""
    low = name.lower()
    if low == CONSENSUS_FOLDER:
        return f"{CONSENSUS_FOLDER}/ holds the consensus poses' half maps"
    if low == MOTION_FOLDER:
        return f"{MOTION_FOLDER}/ holds the modules' motion analysis"
    if _ITERATION_FOLDER.fullmatch(low):
        return "iteration_NN/ holds the outputs of every iteration but the last"
    if low in (n.lower() for n in TOP_FILES):
        return f"{name} is one of the run's files"
    return None


class ModuleFolder:
    """The files of one module's stage folder (``MODULE/`` or ``iteration_NN/MODULE/``)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def half(self, h: int) -> Path:
        """Half map h (1 or 2), consensus frame."""
        return self.path / f"half{h}.mrc"

    @property
    def map(self) -> Path:
        return self.path / "map.mrc"

    @property
    def mask(self) -> Path:
        return self.path / "mask.mrc"

    @property
    def star(self) -> Path:
        return self.path / "particles.star"

    @property
    def postprocess_star(self) -> Path:
        """The module's post-processing in relion_postprocess's layout."""
        return self.path / "postprocess.star"

    def __truediv__(self, name: str) -> Path:
        """Another file of the folder (post-processing, local resolution, plots)."""
        return self.path / name


class RunFolder:
    """The paths of a run folder. out: the output folder; iterations: the run's last iteration (its outputs sit at the
    top of the folder, the others' in ``iteration_NN/``), or None while it is not known (``iterations: auto`` until the
    poses settle: every iteration's in ``iteration_NN/``, the last one's moved to the top then, `promote`);
    max_iterations: the most the run may make (default ``iterations``)."""

    def __init__(self, out, iterations: int | None, max_iterations: int | None = None):
        self.out = Path(out)
        self.iterations = None if iterations is None else int(iterations)
        self.max_iterations = int(max_iterations if max_iterations is not None else (iterations or 1))

    @classmethod
    def planned(cls, cfg, folder=None) -> "RunFolder":
        """The run folder of ``cfg`` as a run starts it (at ``folder`` when given): its last iteration as configured, or
        not known yet for ``iterations: auto``."""
        fixed = isinstance(cfg.iterations, int)
        return cls(cfg.output if folder is None else folder, cfg.iterations if fixed else None,
                   cfg.iterations if fixed else cfg.convergence.max_iterations)

    @classmethod
    def of(cls, cfg, folder=None) -> "RunFolder":
        """The run folder of ``cfg`` as a run left it (at ``folder`` when given, e.g. a finished run moved elsewhere): its
        last iteration as configured, or for ``iterations: auto`` as its results.h5 records it once the poses settled."""
        run = cls.planned(cfg, folder)
        if run.iterations is None:
            from lorefine_mpi.io.results import final_iteration

            run.iterations = final_iteration(run.results)
        return run

    def __truediv__(self, name: str) -> Path:
        return self.out / name

    @property
    def results(self) -> Path:
        return self.out / RESULTS

    @property
    def config(self) -> Path:
        return self.out / CONFIG

    @property
    def log(self) -> Path:
        return self.out / LOG

    @property
    def summary(self) -> Path:
        return self.out / SUMMARY

    @property
    def timings(self) -> Path:
        return self.out / TIMINGS

    @property
    def report(self) -> Path:
        return self.out / REPORT

    @property
    def bodies(self) -> Path:
        """The modules as a RELION multi-body bodies file (`refine.finish`)."""
        return self.out / BODIES

    @property
    def job(self) -> Path:
        """The folder as a RELION job: note.txt and the exit markers (`io.relion_job`) live here."""
        return self.out

    def _iteration_folder(self, iteration: int | None) -> Path:
        return self.out if iteration is None or iteration == self.iterations else self.iteration_folder(iteration)

    def iteration_folder(self, iteration: int) -> Path:
        return self.out / f"iteration_{iteration:02d}"

    def promote(self, iteration: int, module_names) -> None:
        """Make ``iteration`` the last (``iterations: auto``, its poses settled): its module folders and combined map move
        from ``iteration_NN/`` to the top of the folder (a module folder already at the top, from an interrupted move,
        is replaced)."""
        import shutil

        source = self.iteration_folder(iteration)
        for name in module_names:
            if (source / name).is_dir():
                shutil.rmtree(self.out / name, ignore_errors=True)
                (source / name).rename(self.out / name)
        if (source / COMBINED).exists():
            (source / COMBINED).replace(self.out / COMBINED)
        from lorefine_mpi.io.files import MANIFEST

        if source.is_dir() and all(p.name == MANIFEST for p in source.iterdir()):  # only the record of what it held
            shutil.rmtree(source)
        self.iterations = iteration

    def module_folder(self, module_name: str, iteration: int | None = None) -> ModuleFolder:
        """A module's stage folder (the last iteration's by default)."""
        return ModuleFolder(self._iteration_folder(iteration) / module_name)

    def combined(self, iteration: int | None = None) -> Path:
        """The combined map of an iteration (the last one's by default)."""
        return self._iteration_folder(iteration) / COMBINED

    @property
    def consensus_folder(self) -> Path:
        return self.out / CONSENSUS_FOLDER

    def consensus_half(self, h: int) -> Path:
        """Half map h (1 or 2) of the consensus poses."""
        return self.consensus_folder / f"half{h}.mrc"

    @property
    def motion_folder(self) -> Path:
        return self.out / MOTION_FOLDER

    def owned_folders(self, module_names) -> list[Path]:
        """The folders (absolute) the run writes into and owns whole."""
        return ([self.out / name for name in module_names] + [self.consensus_folder, self.motion_folder]
                + [self.iteration_folder(it) for it in range(1, self.max_iterations + 1) if it != self.iterations])


def existing_outputs(cfg) -> list[Path]:
    """The files already where the run would write: its top-level files and everything in its folders."""
    folder = RunFolder.of(cfg)
    found = [folder / name for name in TOP_FILES if (folder / name).is_file()]
    for owned in folder.owned_folders(m.name for m in cfg.modules):
        if owned.is_dir():
            found += sorted(p for p in owned.rglob("*") if p.is_file())
        elif owned.exists():
            found.append(owned)
    return found
