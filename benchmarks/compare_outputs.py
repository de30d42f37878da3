"""Are two `lorefine refine` output folders the same, bit for bit? (What a refactoring must keep.)

    python benchmarks/compare_outputs.py run CONFIG.yaml OUT [--lorefine BIN] [--ranks 0|1|2 ...]
    python benchmarks/compare_outputs.py compare OUT_A OUT_B

``run`` refines CONFIG once per launch mode into ``OUT/serial`` (no mpiexec), ``OUT/n1`` and ``OUT/n2``
(``mpiexec -n 1`` / ``-n 2``), with ``BIN`` as the lorefine executable (default: the one beside this
Python), so that an older checkout's venv can make the reference folders.

``compare`` walks both folders and compares every output that does not record time or the command line:
each MRC file's header (less its text labels, where mrcfile writes the time) and data, each STAR / CSV / JSON file's text (JSON: every key but the ones that hold seconds), and
every dataset and attribute of ``results.h5`` (attributes that hold CPU seconds or the command are left
out). It prints one line per difference, then ``identical: N files`` or ``DIFFERENT: M of N files`` and
exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

SKIP_FILES = {"lorefine.log", "timings.json", "report.html", "config.yaml", ".lorefine.lock", "note.txt"}
SKIP_SUFFIXES = {".png", ".html", ".log"}
MRC_LABELS, MRC_HEADER = 224, 1024  # the ten 80-byte text labels sit at bytes 224-1023 of an MRC header
SKIP_ATTRIBUTES = {"cpu_seconds", "command_line", "config_yaml", "search_fingerprint", "lorefine_version", "attempts"}


def run(config: Path, out: Path, lorefine: str, modes: list[int]) -> None:
    bin_dir = Path(lorefine).parent
    for mode in modes:
        folder = out / ("serial" if mode == 0 else f"n{mode}")
        shutil.rmtree(folder, ignore_errors=True)
        text = config.read_text().replace("output: refined/", f"output: {folder}")
        if f"output: {folder}" not in text:
            raise SystemExit(f"{config}: expected a line 'output: refined/' to replace")
        out.mkdir(parents=True, exist_ok=True)
        local = config.parent / f".compare_{out.name}_{folder.name}.yaml"  # beside the config: its relative paths hold
        local.write_text(text)
        command = [lorefine, "refine", str(local)] if mode == 0 else [str(bin_dir / "mpiexec"), "-n", str(mode), lorefine, "refine", str(local)]
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=config.parent, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)


def _h5_items(path: Path) -> dict:
    items = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                if key not in SKIP_ATTRIBUTES:
                    items[f"{name}@{key}"] = np.asarray(value)
            if isinstance(obj, h5py.Dataset):
                items[name] = obj[...]
        for key, value in f.attrs.items():
            if key not in SKIP_ATTRIBUTES:
                items[f"/@{key}"] = np.asarray(value)
        f.visititems(visit)
    return items


def _same_array(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


def _without_times(value):
    """A JSON value without the keys that hold seconds (``seconds``, ``*_s``)."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not (k == "seconds" or k.endswith("_s"))}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _names_of_run(root: Path) -> list[str]:
    """How a run folder made by `run` names itself in the text it writes (STAR paths relative to the config's folder,
    the config's own name in headers): replaced by one placeholder before text files are compared."""
    return [str(root), f"{root.parent.name}/{root.name}", f".compare_{root.parent.name}_{root.name}.yaml"]


def _same_text(a: Path, b: Path, root_a: Path, root_b: Path) -> bool:
    def normalised(path, root):
        text = path.read_bytes()
        for name in _names_of_run(root):
            text = text.replace(name.encode(), b"RUN")
        return text

    return normalised(a, root_a) == normalised(b, root_b)


def compare_file(a: Path, b: Path, root_a: Path | None = None, root_b: Path | None = None) -> list[str]:
    if not b.exists():
        return [f"{b}: missing"]
    if a.suffix == ".h5":
        x, y = _h5_items(a), _h5_items(b)
        out = [f"{b.name}:{k}: only in one" for k in sorted(x.keys() ^ y.keys())]
        out += [f"{b.name}:{k}: differs" for k in sorted(x.keys() & y.keys()) if not _same_array(x[k], y[k])]
        return out
    if a.suffix in (".mrc", ".mrcs"):  # the header less its labels (mrcfile writes the time there), then the data
        x, y = a.read_bytes(), b.read_bytes()
        same = x[:MRC_LABELS] == y[:MRC_LABELS] and x[MRC_HEADER:] == y[MRC_HEADER:]
        return [] if same else [f"{b}: differs"]
    if a.suffix == ".json":
        x, y = (_without_times(json.loads(path.read_text())) for path in (a, b))
        return [] if x == y else [f"{b}: differs"]
    if root_a is not None and root_b is not None:
        return [] if _same_text(a, b, root_a, root_b) else [f"{b}: differs"]
    return [] if a.read_bytes() == b.read_bytes() else [f"{b}: differs"]


def compare(a: Path, b: Path) -> int:
    for folder in (a, b):
        if not folder.is_dir():
            print(f"{folder}: no such output folder")
            return 1
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name not in SKIP_FILES and p.suffix not in SKIP_SUFFIXES
                   and not p.name.startswith("."))
    problems = []
    for rel in files:
        problems += compare_file(a / rel, b / rel, a.resolve(), b.resolve())
    extra = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name not in SKIP_FILES and p.suffix not in SKIP_SUFFIXES
                   and not p.name.startswith(".") and not (a / p.relative_to(b)).exists())
    problems += [f"{b / rel}: only in {b}" for rel in extra]
    if not files:
        problems.append(f"{a}: holds no outputs to compare")
    for line in problems:
        print(line)
    if problems:
        print(f"DIFFERENT: {len(problems)} difference(s) over {len(files)} files ({a} vs {b})")
        return 1
    print(f"identical: {len(files)} files ({a} vs {b})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("config", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--lorefine", default=str(Path(sys.executable).parent / "lorefine"))
    p.add_argument("--ranks", type=int, nargs="+", default=[0, 1, 2], help="0 = serial, without mpiexec")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.config.resolve(), args.out.resolve(), args.lorefine, args.ranks)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
