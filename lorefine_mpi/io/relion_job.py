"""The files that make a folder a RELION job, written in RELION 3.1's layouts: the job's record (``note.txt``, the exit
markers the GUI reads), a multi-body bodies file, and ``postprocess.star``.

A RELION job (``Refine3D/job010/`` …) carries:
    note.txt                    every command that ran in it, appended: `` ++++ Executing new job on DATE``, the
                                command line, `` ++++ `` (RELION appends the same block when a job is continued)
    RELION_JOB_EXIT_SUCCESS     an empty file, written when the program ends well; the GUI marks the job finished
    RELION_JOB_EXIT_FAILURE     an empty file, written when the program ends with an error; the GUI marks it failed
    (RELION_JOB_EXIT_ABORTED    written by a RELION program that was asked to abort from the GUI; lorefine never writes
                                it, but removes it as the other two when a run starts again)
A RELION program killed by a signal (the scheduler's time limit, ``scancel``) writes no marker: the job stays
"running" in the GUI until it is continued. lorefine does the same for a run stopped by a signal (status 3): the run
is resumable, and the requeued job writes the marker when it ends.

Every file is written under a temporary name and renamed (a marker is never seen half-written).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from lorefine_mpi.io.star import atomic_write_text

NOTE = "note.txt"
SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
MARKERS = (SUCCESS, FAILURE, ABORTED)


# -- the job's record -----------------------------------------------------------------------------
def begin(folder, command_line: str, now: datetime.datetime | None = None) -> None:
    """A run starts (or continues) in ``folder``: the end markers of an earlier run go, and the command is appended to
    note.txt in RELION's words."""
    folder = Path(folder)
    for name in MARKERS:
        (folder / name).unlink(missing_ok=True)
    note = folder / NOTE
    before = note.read_text() if note.is_file() else ""
    when = (now or datetime.datetime.now()).strftime("%a %b %d %H:%M:%S %Y")
    atomic_write_text(note, f"{before} ++++ Executing new job on {when}\n ++++ with the following command(s): \n{command_line}\n ++++ \n")


def end(folder, succeeded: bool) -> Path:
    """The run ended well (``RELION_JOB_EXIT_SUCCESS``) or with an error (``RELION_JOB_EXIT_FAILURE``); returns the marker."""
    marker = Path(folder) / (SUCCESS if succeeded else FAILURE)
    for name in MARKERS:
        if name != marker.name:
            (Path(folder) / name).unlink(missing_ok=True)
    atomic_write_text(marker, "")
    return marker


# -- STAR tables in RELION's layout ---------------------------------------------------------------
def _number(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return f"{value:.6f}" if np.isfinite(value) else "-99.000000"


def _text(value) -> str:
    if isinstance(value, str):
        return f'"{value}"' if (not value or any(c.isspace() for c in value)) else value
    return _number(value)


def list_block(name: str, values: dict) -> str:
    """A RELION list block (``data_NAME`` with one ``_rlnLabel value`` per line)."""
    width = max(len(k) for k in values) + 1
    lines = ["", "# version 30001", "", f"data_{name}", ""]
    lines += [f"_{label:<{width}} {_text(value)}" for label, value in values.items()]
    return "\n".join(lines) + "\n \n"


def loop_block(name: str, columns: dict) -> str:
    """A RELION table (``data_NAME``, ``loop_``, one ``_rlnLabel #i`` per column, one row per line). columns: {label:
    sequence}, all of one length."""
    labels = list(columns)
    lines = ["", "# version 30001", "", f"data_{name}", "", "loop_ "]
    lines += [f"_{label} #{i + 1} " for i, label in enumerate(labels)]
    for row in zip(*(columns[label] for label in labels)):
        lines.append(" ".join(_text(v) for v in row) + " ")
    return "\n".join(lines) + "\n \n"


def write_bodies_star(path, bodies) -> Path:
    """A multi-body bodies file for ``relion_refine --multibody_masks`` and ``relion_flex_analyse``. bodies: one dict per
    body with ``mask`` (a path as RELION should read it: relative to its project directory), ``rotate_relative_to``
    (1-based number of another body), ``sigma_angles_deg`` and ``sigma_offset_angstrom`` (RELION's σ of the body's
    rotation and translation; it searches ±3σ)."""
    text = "# lorefine: the modules of a lorefine refine run as RELION multi-body bodies (σ learned by lorefine)\n"
    text += loop_block("", {
        "rlnBodyMaskName": [str(b["mask"]) for b in bodies],
        "rlnBodyRotateRelativeTo": [int(b["rotate_relative_to"]) for b in bodies],
        "rlnBodySigmaAngles": [float(b["sigma_angles_deg"]) for b in bodies],
        "rlnBodySigmaOffsetAngst": [float(b["sigma_offset_angstrom"]) for b in bodies],
    })
    atomic_write_text(path, text)
    return Path(path)


def write_postprocess_star(path, *, comment: str, general: dict, fsc: dict, guinier: dict) -> Path:
    """``postprocess.star`` as relion_postprocess writes it: a comment header, ``data_general`` (a list: final
    resolution, B-factor, half maps, mask, …), ``data_fsc`` and ``data_guinier`` (tables). general, fsc, guinier:
    {RELION label without the underscore: value or column}."""
    text = f"# {comment}\n" + list_block("general", general) + loop_block("fsc", fsc) + loop_block("guinier", guinier)
    atomic_write_text(path, text)
    return Path(path)
