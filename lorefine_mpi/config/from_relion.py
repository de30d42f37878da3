"""A lorefine config for a RELION project (``lorefine init``): from a finished Refine3D job and the modules' masks (or a
multi-body bodies file), a commented YAML file whose paths are RELION's, as a run from the project directory reads them.

A finished Refine3D job (``Refine3D/jobNNN/``) holds, among its per-iteration files, the final ``run_data.star`` (the
consensus poses), ``run_class001.mrc`` (the consensus map) and ``run_half1_class001_unfil.mrc`` /
``run_half2_class001_unfil.mrc`` (its unfiltered half maps, from the particles' rlnRandomSubset halves). The first two
are needed; the half maps are used when present (``consensus_half_maps``).

The search window from a σ (RELION multi-body's rlnBodySigmaAngles and rlnBodySigmaOffsetAngst, or ``--sigma-deg`` and
``--sigma-angst``): RELION searches ±3σ around the consensus pose with a Gaussian prior of width σ, so lorefine's window
is the same ±3σ with the same prior:
    cone_half_angle_deg = psi_half_range_deg = 3 σ_angle                 (per module)
    max_shift_px = ⌈3 σ_offset / pixel size⌉ (at least 1)              (per module; shift_step_px stays 1)
    prior_sigma_deg = σ_angle, prior_sigma_px = σ_offset / pixel size    (per module)
    angular_step_deg = psi_step_deg = 2° (the paper's) when 3 σ_angle ≥ 6°, else σ_angle (at least 0.5°), for the
                       smallest σ_angle of the modules (the steps are the search section's, one for all modules): three
                       steps either side of the consensus pose at least
Without a σ the module keeps the default window and a prior learned from the data (``auto``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lorefine_mpi.errors import InputError

REFINE3D_FILES = {"particles": "run_data.star", "consensus_map": "run_class001.mrc"}
HALF_MAPS = ("run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc")
MIN_STEP_DEG = 0.5
PAPER_STEP_DEG = 2.0


def window_for_sigma(sigma_deg: float | None, sigma_angstrom: float | None, pixel_size_angstrom: float) -> dict:
    """The module's own search keys for RELION's σ (module docstring: the window and the prior); {} for no σ."""
    keys = {}
    if sigma_deg is not None:
        keys |= {"cone_half_angle_deg": round(3.0 * sigma_deg, 3), "psi_half_range_deg": round(3.0 * sigma_deg, 3),
                 "prior_sigma_deg": round(sigma_deg, 4)}
    if sigma_angstrom is not None:
        sigma_px = sigma_angstrom / pixel_size_angstrom
        keys |= {"max_shift_px": max(1, math.ceil(3.0 * sigma_px - 1e-9)), "prior_sigma_px": round(sigma_px, 4)}
    return keys


def angular_step_for_sigma(sigma_deg: float) -> float:
    """The angular and ψ step for a σ (module docstring): 2° when the ±3σ window holds three such steps either side,
    else σ itself (at least 0.5°)."""
    return PAPER_STEP_DEG if 3.0 * sigma_deg >= 3 * PAPER_STEP_DEG else round(max(MIN_STEP_DEG, sigma_deg), 3)


def module_names(masks) -> list[str]:
    """Names for masks: their file names without the extension, or, when those are alike (RELION's MaskCreate writes
    every mask as ``mask.mrc``), their folders' names (``job020``)."""
    stems = [Path(m).stem for m in masks]
    if len(set(stems)) == len(stems):
        return stems
    parents = [Path(m).parent.name for m in masks]
    if len(set(parents)) == len(parents) and all(parents):
        return parents
    return [f"module{k + 1}" for k in range(len(masks))]


def _relative(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


def _bodies(path: Path, project: Path):
    """(mask path, σ_angle deg or None, σ_offset Å or None, rotate-relative-to index or None) per body of a bodies file."""
    from lorefine_mpi.io.star import parse_star, resolve_relion_path

    blocks = parse_star(path)
    columns, rows = next(((c, r) for c, r in blocks.values() if "rlnBodyMaskName" in c), ([], []))
    if not rows:
        raise InputError(f"{path}: not a RELION bodies file (expected a table with _rlnBodyMaskName, one row per body)")

    def value(row, column, convert=float):
        if column not in columns:
            return None
        try:
            return convert(row[columns.index(column)])
        except ValueError:
            raise InputError(f"{path}: _{column}: expected a number, got {row[columns.index(column)]!r}") from None

    out = []
    for row in rows:
        mask = Path(resolve_relion_path(row[columns.index("rlnBodyMaskName")], str(project), str(path.parent)))
        out.append((mask, value(row, "rlnBodySigmaAngles"), value(row, "rlnBodySigmaOffsetAngst"), value(row, "rlnBodyRotateRelativeTo", int)))
    return out


def make_config(job: Path, *, config_path: Path, project: Path, masks=(), names=(), bodies: Path | None = None,
                sigma_deg: float | None = None, sigma_angstrom: float | None = None, output: str | None = None) -> str:
    """The text of a commented config for the Refine3D job folder ``job`` (module docstring), to be written at
    ``config_path``; its paths are relative to the config's folder, ``project_dir`` is the RELION project directory."""
    from lorefine_mpi.io import mrc

    job, project, folder = job.resolve(), project.resolve(), config_path.resolve().parent
    if not job.is_dir():
        raise InputError(f"{job}: not a folder; expected a RELION Refine3D job folder (Refine3D/jobNNN/)")
    found = {key: job / name for key, name in REFINE3D_FILES.items()}
    for key, path in found.items():
        if not path.is_file():
            raise InputError(f"{path}: not found; expected a finished Refine3D job ({', '.join(REFINE3D_FILES.values())})")
    halves = [job / name for name in HALF_MAPS]
    pixel = mrc.voxel_size_angstrom(found["consensus_map"])
    if bodies is not None:
        if masks:
            raise InputError("--masks and --bodies: give one of them (a bodies file names its masks)")
        if sigma_deg is not None or sigma_angstrom is not None:
            raise InputError("--sigma-deg/--sigma-angst and --bodies: the bodies file gives each body's σ")
        rows = _bodies(bodies.resolve(), project)
        names = names or [f"body{k + 1}" for k in range(len(rows))]
    else:
        if not masks:
            raise InputError("expected the modules' masks (--masks M1.mrc M2.mrc …) or a RELION bodies file (--bodies)")
        rows = [(Path(m).resolve(), sigma_deg, sigma_angstrom, None) for m in masks]
        names = names or module_names(masks)
    if len(names) != len(rows):
        raise InputError(f"--names: expected {len(rows)} names (one per module), got {len(names)}")
    if len(set(names)) != len(names):
        raise InputError(f"--names: expected different names, got {' '.join(names)}")
    for mask, *_ in rows:
        if not mask.is_file():
            raise InputError(f"{mask}: mask not found")
    output = output or f"LoRefine/{job.name}/"
    sigmas = [r[1] for r in rows if r[1] is not None]
    lines = [
        f"# lorefine config for the RELION Refine3D job {_relative(job, project)} (written by lorefine init; every key of",
        "# configs/default.yaml may be added). Run it from anywhere: paths are relative to this file's folder, and image",
        "# names in the STAR file relative to project_dir, as RELION reads them.",
        f"#   lorefine check {_relative(config_path.resolve(), project)}          # validates it, and prints what the search will do",
        f"#   mpiexec -n 4 lorefine refine {_relative(config_path.resolve(), project)}",
        f"project_dir: {_relative(project, folder)}                     # the RELION project directory",
        f"particles: {_relative(found['particles'], folder)}             # the consensus poses",
        f"consensus_map: {_relative(found['consensus_map'], folder)}",
    ]
    if all(h.is_file() for h in halves):
        lines += ["# the consensus's own half maps: the first search band and the before/after FSC use them as they are",
                  f"consensus_half_maps: [{', '.join(_relative(h, folder) for h in halves)}]"]
    else:
        lines.append(f"# no {HALF_MAPS[0]} / {HALF_MAPS[1]} in the job (not finished?): lorefine reconstructs them")
    lines.append("modules:")
    for k, (name, (mask, s_deg, s_angst, relative_to)) in enumerate(zip(names, rows)):
        keys = window_for_sigma(s_deg, s_angst, pixel)
        where = f"σ {s_deg:g}° / {s_angst:g} Å" if s_deg is not None and s_angst is not None else None
        lines.append(f"  - name: {name}")
        lines.append(f"    mask: {_relative(mask, folder)}")
        if relative_to is not None and 1 <= relative_to <= len(names) and relative_to != k + 1:
            lines.append(f"    rotate_relative_to: {names[relative_to - 1]}")
        if keys:
            lines.append(f"    # the search window for {where or 'the σ given'} (RELION searches ±3σ; lorefine_mpi/config/from_relion.py):")
            lines += [f"    {key}: {value:g}" for key, value in keys.items()]
        else:
            lines.append("    # no σ given: the default window (search section), and a prior learned from the data")
    if sigmas:
        step = angular_step_for_sigma(min(sigmas))
        lines += [f"# the angular steps for the smallest σ, {min(sigmas):g}° (three steps either side at least)",
                  f"search: {{angular_step_deg: {step:g}, psi_step_deg: {step:g}}}"]
    lines += [
        f"output: {output}                       # lorefine's job folder (a RELION job: note.txt, RELION_JOB_EXIT_SUCCESS)",
        "iterations: 2",
        "seed: 1",
    ]
    return "\n".join(lines) + "\n"


def write_config(path: Path, text: str) -> Path:
    """Write the config (refusing to replace a file), checked by lorefine's own config reader before it is renamed into
    place: a config init writes is one that `lorefine check` reads."""
    from lorefine_mpi.config import load_config
    from lorefine_mpi.io.star import atomic_write_text

    path = Path(path)
    if path.exists():
        raise InputError(f"{path}: exists already; expected a new file for the config (move it away, or give another --config)")
    trial = path.with_name(f".{path.name}.init.yaml")
    try:
        trial.write_text(text)
        load_config(trial)
    finally:
        trial.unlink(missing_ok=True)
    atomic_write_text(path, text)
    return path
