"""Helpers of the hostile suite (tests/integration/test_hostile_*.py): lorefine run in this process, the refusal every
case must show (one line on stderr, exit status 2, no traceback, nothing written), and the tools that break inputs."""

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import mrcfile
import numpy as np
import yaml
from runs import DATA, edit_config, make_run, messages

from lorefine_mpi.cli.main import main
from lorefine_mpi.io import runlock


def lorefine(capfd, *args):
    """lorefine in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def snapshot(*folders) -> dict:
    """Every entry below ``folders`` (the folders themselves included): its kind, and a regular file's bytes; a FIFO or a
    device is never opened."""
    found = {}
    for folder in folders:
        folder = Path(folder)
        for path in [folder, *sorted(folder.rglob("*"))] if folder.is_dir() else [folder]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            kind = stat.S_IFMT(st.st_mode)
            found[str(path)] = (kind, path.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(path) if stat.S_ISLNK(st.st_mode) else None)
    return found


def assert_refused(capfd, args, fragment, watch, *, also=()):
    """``lorefine ARGS`` is refused: exit status 2, one line on stderr that starts ``lorefine: error:`` and holds
    ``fragment`` (and every string of ``also``), no traceback, and nothing below the folders ``watch`` changed."""
    watch = [watch] if isinstance(watch, (str, Path)) else list(watch)
    before = snapshot(*watch)
    code, out, err = lorefine(capfd, *args)
    lines = messages(err)
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("lorefine: error:"), err[-3000:]
    assert "Traceback" not in err
    for text in (fragment, *also):
        assert text in lines[0], lines[0]
    assert snapshot(*watch) == before, "something was written"
    return lines[0]


def assert_runs_with_warning(capfd, args, fragment):
    """``lorefine check ...`` passes (status 0) and prints a warning holding ``fragment``."""
    code, out, err = lorefine(capfd, *args)
    assert code == 0, err[-3000:]
    warnings = [line for line in out.splitlines() if line.strip().startswith("warning:")]
    assert any(fragment in w for w in warnings), out
    return warnings


# -- inputs -------------------------------------------------------------------------------------------
def ctf_run(folder: Path, **overrides) -> Path:
    """A valid config over RELION-made images with a CTF (tests/data/proj_ctf), the CTF used."""
    return make_run(folder, source="proj_ctf", score={"mode": "subtract", "ctf": "auto"}, **overrides)


def edit_optics(path: Path, column: str, value) -> None:
    """Set a column of the (one) data_optics row of a STAR 3.1 file."""
    lines = path.read_text().splitlines()
    start, end = lines.index("data_optics"), lines.index("data_particles")
    header = [i for i in range(start, end) if lines[i].startswith("_rln")]
    names = [lines[i].split()[0][1:] for i in header]
    row = next(i for i in range(header[-1] + 1, end) if lines[i].strip() and not lines[i].startswith("#"))
    parts = lines[row].split()
    parts[names.index(column)] = str(value)
    lines[row] = " ".join(parts)
    path.write_text("\n".join(lines) + "\n")


def write_mrc(path: Path, data, voxel=4.0, mode=None) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data))
        m.voxel_size = voxel


def zero_header(path: Path) -> None:
    """An MRC file whose 1024-byte header is all zeros (its data kept)."""
    data = bytearray(path.read_bytes())
    data[:1024] = bytes(1024)
    path.write_bytes(bytes(data))


def set_header_int(path: Path, word: int, value: int) -> None:
    """Set 32-bit word ``word`` (0-based) of an MRC header."""
    data = bytearray(path.read_bytes())
    data[4 * word: 4 * word + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(data))


def set_header_float(path: Path, word: int, value: float) -> None:
    data = bytearray(path.read_bytes())
    data[4 * word: 4 * word + 4] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))


def hold_lock(folder: Path) -> None:
    """``folder`` locked by a live lorefine refine (this test process stands for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"token": "0123456789abcdef", "host": socket.gethostname(), "pid": os.getpid(),
              "pid_start": runlock._process_start(os.getpid()), "slurm_job_id": None, "started": "now", "count": 0, "command": "test"}
    (folder / runlock.NAME).write_text(json.dumps(record))


def fake_run_folder(folder: Path) -> Path:
    """A folder that looks like a lorefine run's (results.h5, config.yaml) for the commands that add to one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (folder / "config.yaml").write_text("particles: x\n")
    return folder


def copy_data(folder: Path, *names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(DATA / name, folder / name)


def set_config(config: Path, **values) -> None:
    edit_config(config, lambda c: c.update(values))


def set_search(config: Path, **values) -> None:
    edit_config(config, lambda c: c["search"].update(values))


def yaml_file(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
