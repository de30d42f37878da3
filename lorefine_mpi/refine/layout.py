"""The files a `lorefine refine` run writes in its output folder (one list, so the folder checks know
every name the run would write).

    results.h5, config.yaml, lorefine.log, .lorefine.lock
    consensus/half1.mrc, consensus/half2.mrc   the consensus poses' half maps (search.max_resolution_angstrom: auto)
    MODULE/{map,half1,half2,mask}.mrc, MODULE/particles.star, MODULE/fsc.json, MODULE/fsc.png, combined.mrc
    iteration_NN/...   the same for every iteration but the last
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results.h5"
CONFIG = "config.yaml"
LOG = "lorefine.log"
LOCK = ".lorefine.lock"
CONSENSUS_FOLDER = "consensus"
MODULE_FILES = ("map.mrc", "half1.mrc", "half2.mrc", "mask.mrc", "particles.star", "fsc.json", "fsc.png")


def module_folder(cfg, iteration: int, module_name: str) -> str:
    """A module's output folder relative to the output folder."""
    return module_name if iteration == cfg.iterations else f"iteration_{iteration:02d}/{module_name}"


def combined_path(cfg, iteration: int) -> str:
    return "combined.mrc" if iteration == cfg.iterations else f"iteration_{iteration:02d}/combined.mrc"


def output_files(cfg) -> list[Path]:
    """Every file the run writes (absolute), the lock file excepted."""
    out = Path(cfg.output)
    files = [out / RESULTS, out / CONFIG, out / LOG]
    if cfg.search.max_resolution_angstrom == "auto":
        files += [out / CONSENSUS_FOLDER / f"half{h}.mrc" for h in (1, 2)]
    for iteration in range(1, cfg.iterations + 1):
        for module in cfg.modules:
            folder = out / module_folder(cfg, iteration, module.name)
            files += [folder / name for name in MODULE_FILES]
        files.append(out / combined_path(cfg, iteration))
    return files
