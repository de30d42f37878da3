"""What a `lorefine refine` run writes in its output folder, so the folder checks know every place the run
would write (`config.check.check_output`).

    results.h5, config.yaml, lorefine.log, .lorefine.lock (while a run holds the folder)
    combined.mrc, summary.json, timings.json, report.html
    MODULE/                 the module's maps, STAR file, FSC, post-processing, local resolution, subtracted particles
    consensus/              the consensus poses' half maps
    motion/                 the modules' motion (post-processing)
    iteration_NN/           every iteration but the last: MODULE/ and combined.mrc
The run owns these folders whole: a file in one of them is one the run may write.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results.h5"
CONFIG = "config.yaml"
LOG = "lorefine.log"
LOCK = ".lorefine.lock"
CONSENSUS_FOLDER = "consensus"
TOP_FILES = (RESULTS, CONFIG, LOG, "combined.mrc", "summary.json", "timings.json", "report.html")


def module_folder(cfg, iteration: int, module_name: str) -> str:
    """A module's output folder relative to the output folder."""
    return module_name if iteration == cfg.iterations else f"iteration_{iteration:02d}/{module_name}"


def combined_path(cfg, iteration: int) -> str:
    return "combined.mrc" if iteration == cfg.iterations else f"iteration_{iteration:02d}/combined.mrc"


def owned_folders(cfg) -> list[Path]:
    """The folders (absolute) the run writes into and owns whole."""
    out = Path(cfg.output)
    return ([out / m.name for m in cfg.modules] + [out / CONSENSUS_FOLDER, out / "motion"]
            + [out / f"iteration_{it:02d}" for it in range(1, cfg.iterations)])


def existing_outputs(cfg) -> list[Path]:
    """The files already where the run would write: its top-level files and everything in its folders."""
    out = Path(cfg.output)
    found = [out / name for name in TOP_FILES if (out / name).is_file()]
    for folder in owned_folders(cfg):
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*") if p.is_file())
        elif folder.exists():
            found.append(folder)
    return found
