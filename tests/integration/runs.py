"""Tiny runs for the integration tests: a valid config over tests/data (box 48, 4 Å/px, the two-module
phantom), a small search, and helpers to run lorefine in this process or in a subprocess."""

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import yaml

from lorefine_mpi.io.star import read_star, write_star

DATA = Path(__file__).resolve().parents[1] / "data"
LOREFINE = [sys.executable, "-m", "lorefine_mpi.cli.main"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")  # a log record (progress), not a message
SMALL_SEARCH = {"strategy": "separate", "cone_half_angle_deg": 4, "angular_step_deg": 2, "psi_half_range_deg": 2, "psi_step_deg": 2,
                "max_shift_px": 2, "shift_step_px": 1, "n_random_angles": 4}


def make_run(folder: Path, n_particles=24, source="proj_noctf", **overrides) -> Path:
    """A valid config and its inputs in ``folder`` (the first n particles of tests/data/SOURCE.star);
    returns the config's path. overrides: top-level config keys. (The *_noctf sets carry defocus values
    although RELION projected them without a CTF, hence score.ctf: false.)"""
    folder.mkdir(parents=True, exist_ok=True)
    table = read_star(DATA / f"{source}.star").subset(slice(0, n_particles))
    for name in (f"{source}.mrcs", "phantom_whole.mrc", "phantom_mask_module_1.mrc", "phantom_mask_module_2.mrc"):
        shutil.copy(DATA / name, folder / name)
    write_star(folder / "particles.star", table)
    cfg = {
        "particles": "particles.star", "consensus_map": "phantom_whole.mrc",
        "modules": [{"name": "large", "mask": "phantom_mask_module_1.mrc"}, {"name": "small", "mask": "phantom_mask_module_2.mrc"}],
        "search": dict(SMALL_SEARCH), "score": {"mode": "subtract", "ctf": False}, "parallel": {"unit_size": 4, "class_spacing_deg": 15},
        "reconstruction": {"padding": 1, "gridding_iterations": 2},  # fast: these runs are about behaviour, not accuracy
        "postprocess": {"enabled": False}, "output": "out", "project_dir": ".", "seed": 3, "iterations": 1,
    } | overrides
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder / "config.yaml"


def edit_config(config: Path, change) -> None:
    cfg = yaml.safe_load(config.read_text())
    change(cfg)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def rewrite_map(path: Path, make, voxel=None) -> None:
    with mrcfile.open(path) as m:
        data, old_voxel = np.array(m.data), float(m.voxel_size.x)
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore")  # mrcfile warns of the NaN some tests write on purpose
        m.set_data(np.ascontiguousarray(make(data), dtype=np.float32))
        m.voxel_size = old_voxel if voxel is None else voxel


def messages(stderr: str) -> list[str]:
    """The lines of stderr that are not progress log records."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def run(*args, timeout=300, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(LOREFINE + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)


def tree(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes (to show that nothing changed)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def units_done(out: Path, stage="iteration_01/large") -> int:
    try:
        with h5py.File(out / "results.h5", "r", locking=False) as f:
            return int(f[stage]["unit_done"][...].sum()) if stage in f else 0
    except (OSError, KeyError):
        return 0


def edit_star(path: Path, column: str, values: dict) -> None:
    """Set particle rows' values (row number from 0 → text) of a column of a STAR 3.1 file (added if absent)."""
    lines = path.read_text().splitlines()
    start = lines.index("data_particles")
    header = [i for i, line in enumerate(lines) if i > start and line.startswith("_rln")]
    names = [lines[i].split()[0][1:] for i in header]
    rows = [i for i in range(header[-1] + 1, len(lines)) if lines[i].strip()]
    if column not in names:
        lines.insert(header[-1] + 1, f"_{column} #{len(names) + 1}")
        rows = [i + 1 for i in rows]
        names.append(column)
        for i in rows:
            lines[i] += " 0"
    j = names.index(column)
    for row, value in values.items():
        parts = lines[rows[row]].split()
        parts[j] = str(value)
        lines[rows[row]] = " ".join(parts)
    path.write_text("\n".join(lines) + "\n")


def drop_star_columns(path: Path, names) -> None:
    """Remove particle columns from a STAR 3.1 file."""
    lines = path.read_text().splitlines()
    start = lines.index("data_particles")
    header = [i for i, line in enumerate(lines) if i > start and line.startswith("_rln")]
    columns = [lines[i].split()[0][1:] for i in header]
    keep = [j for j, c in enumerate(columns) if c not in names]
    out = lines[: header[0]] + [f"_{columns[j]} #{k + 1}" for k, j in enumerate(keep)]
    for line in lines[header[-1] + 1 :]:
        parts = line.split()
        out.append(" ".join(parts[j] for j in keep) if len(parts) == len(columns) else line)
    path.write_text("\n".join(out) + "\n")
