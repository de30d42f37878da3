"""RELION STAR files (3.0 and 3.1) ↔ `ParticleTable`; the only place where degrees and Å origins live.

Reading
    STAR 3.1: ``data_optics`` (one row per optics group: pixel size, voltage, Cs, amplitude contrast,
    image size) and ``data_particles``; origins in ``rlnOriginXAngst/YAngst`` (Å).
    STAR 3.0: one particle block (``data_``, ``data_images`` or ``data_particles``), no optics table,
    origins in ``rlnOriginX/Y`` (px); pixel size from ``rlnImagePixelSize`` or
    ``rlnDetectorPixelSize`` (µm) · 1e4 / ``rlnMagnification``; voltage, Cs, Q0 per particle.
    ``rlnImageName`` is ``000123@stack.mrcs`` (1-based). A relative stack name is resolved as RELION
    resolves it: against the *project directory* (RELION's working directory; the config key
    ``project_dir``, default the current directory). When the stack is not there but beside the STAR
    file, that one is used (files written for a folder of their own, such as RELION's test sets and
    `lorefine simulate` output); in neither place, the project directory's path is kept and
    `lorefine check` names both places.

Writing (`write_star`, the one writer)
    Always STAR 3.1. Every column read is written back, in order, with its original text, unless new
    poses replace it; so a round trip keeps the columns lorefine does not use. A STAR 3.0 table gets a
    data_optics table with the real image size (read from its stacks) and pixel size. Image names for
    RELION are written relative to the project directory (`relative_image_names`), so RELION run there
    opens them wherever the STAR file lies.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.io.files import regular_input, replacing
from lorefine_mpi.io.particles import OpticsGroup, ParticleTable

_REQUIRED = ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
MAX_INTEGER = 2**31 - 1  # an image number, optics group or half set beyond this is not a value any file holds


def parse_star(path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """All blocks of a STAR file: name → (column names without '_', rows of strings)."""
    path = regular_input(path, "STAR file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read it as a STAR file ({error.__class__.__name__})") from None
    blocks: dict[str, tuple[list[str], list[list[str]]]] = {}
    name, columns, rows, in_loop = None, [], [], False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            name, columns, rows, in_loop = line[5:], [], [], False
            if name in blocks:
                raise InputError(f"{path}: line {number}: block data_{name} appears twice; expected each block once")
            blocks[name] = (columns, rows)
            continue
        if name is None:
            raise InputError(f"{path}: line {number}: expected a 'data_' block first, got {line[:40]!r}")
        if line.startswith("loop_"):
            in_loop = True
            continue
        if line.startswith("_"):
            parts = line[1:].split(None, 1)
            if parts and parts[0] in columns:
                raise InputError(f"{path}: line {number}: column _{parts[0]} appears twice in block data_{name}; expected each column once")
            if in_loop and not rows:
                columns.append(parts[0])
            else:  # a key-value block
                if len(parts) < 2:
                    raise InputError(f"{path}: line {number}: key {parts[0]!r} has no value")
                columns.append(parts[0])
                if not rows:
                    rows.append([])
                rows[0].append(_tokens(parts[1], path, number)[0])
            continue
        values = _tokens(line, path, number)
        if not in_loop or len(values) != len(columns):
            raise InputError(
                f"{path}: line {number}: expected {len(columns)} values in block data_{name}, got {len(values)}"
            )
        rows.append(values)
    if not blocks:
        raise InputError(f"{path}: not a STAR file (no 'data_' block)")
    return blocks


def _tokens(line, path, number):
    if '"' not in line and "'" not in line:
        return line.split()
    try:
        return shlex.split(line, posix=True)
    except ValueError:
        raise InputError(f"{path}: line {number}: unbalanced quotes") from None


def _column(path, columns, rows, name, convert=float, default=None):
    if name not in columns:
        if default is None:
            raise InputError(f"{path}: missing required column _{name}")
        return np.full(len(rows), default, dtype=np.float64)
    j = columns.index(name)
    try:
        values = np.array([convert(r[j]) for r in rows])
    except ValueError:
        bad = next(r[j] for r in rows if not _converts(convert, r[j]))
        raise InputError(f"{path}: column _{name}: expected numbers, got {bad!r}") from None
    if convert is int and len(values) and values.dtype.kind not in "iu":  # beyond int64: numpy keeps Python ints as objects
        bad = next(r[j] for r in rows if abs(int(r[j])) > MAX_INTEGER)
        raise InputError(f"{path}: column _{name}: {bad} is not a plausible value (expected an integer below {MAX_INTEGER:,})")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        row = int(np.argmin(np.isfinite(values)))
        raise InputError(f"{path}: column _{name}, particle {row + 1}: expected a finite number, got {rows[row][j]!r}")
    return values


def _converts(convert, text):
    try:
        convert(text)
        return True
    except ValueError:
        return False


def read_star(path, project_dir=None) -> ParticleTable:
    """A RELION STAR file (3.0 or 3.1) as a `ParticleTable` in internal units.

    project_dir: the folder relative image names are resolved against, as RELION does (its working
    directory); default the current working directory. See the module docstring for the fallback.
    """
    path = resolved(path) if Path(path).exists() else Path(path)
    return table_from_blocks(parse_star(path), path, project_dir)


def table_from_columns(optics, columns: dict, path, project_dir=None) -> ParticleTable:
    """A new particle table from per-particle columns, as `read_star` would read it from ``path``.

    optics: `OpticsGroup` list; columns: name (without '_') → (n,) values (str, int or float; floats
    written %.6f). Write it with `write_star`.
    """
    def text(v):
        if isinstance(v, (str, np.str_)):
            return str(v)
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        return _format(float(v))

    names = list(columns)
    n = len(next(iter(columns.values())))
    values = [columns[c] for c in names]
    blocks = {
        "optics": (list(_OPTICS_COLUMNS), [_optics_row(g, g.image_size_px) for g in optics]),
        "particles": (names, [[text(v[i]) for v in values] for i in range(n)]),
    }
    return table_from_blocks(blocks, Path(path), project_dir)


def table_from_blocks(blocks, path, project_dir=None) -> ParticleTable:
    """The particle table of parsed STAR blocks (`parse_star`) read from ``path``."""
    optics_columns, optics_rows = blocks.get("optics", ([], []))
    if "particles" in blocks:
        columns, rows = blocks["particles"]
    else:
        candidates = [b for b in blocks if b != "optics"]
        if not candidates:
            raise InputError(f"{path}: no particle block (data_particles or data_)")
        columns, rows = blocks[candidates[0]]
    if not rows:
        raise InputError(f"{path}: the particle table is empty")
    for name in _REQUIRED:
        if name not in columns:
            raise InputError(f"{path}: missing required column _{name}")
    has_px_origin = "rlnOriginX" in columns or "rlnOriginY" in columns
    has_angst_origin = "rlnOriginXAngst" in columns or "rlnOriginYAngst" in columns
    if has_px_origin and (has_angst_origin or optics_rows):
        raise InputError(
            f"{path}: mixes STAR 3.0 and 3.1 columns (_rlnOriginX/Y in px with "
            f"{'_rlnOriginXAngst' if has_angst_origin else 'a data_optics table'}); expected one format"
        )
    n = len(rows)
    optics = _optics(path, optics_columns, optics_rows, columns, rows)
    group = _column(path, columns, rows, "rlnOpticsGroup", int, 1).astype(np.int64) if optics_rows else np.ones(n, np.int64)
    if optics_rows:
        unknown = sorted(set(group.tolist()) - set(optics))
        if unknown:
            raise InputError(f"{path}: _rlnOpticsGroup {unknown[0]} is not in the data_optics table")
    else:
        optics, group = _optics_30(path, columns, rows)
    apix = np.array([optics[int(g)].pixel_size_angstrom for g in group])
    if has_px_origin:
        origin = np.stack([_column(path, columns, rows, "rlnOriginX", default=0.0), _column(path, columns, rows, "rlnOriginY", default=0.0)], -1)
    else:
        origin = np.stack(
            [_column(path, columns, rows, "rlnOriginXAngst", default=0.0), _column(path, columns, rows, "rlnOriginYAngst", default=0.0)], -1
        ) / apix[:, None]
    names = [r[columns.index("rlnImageName")] for r in rows]
    project = Path(os.getcwd() if project_dir is None else project_dir).resolve()
    index, stacks = _image_locations(path, names, project)
    seen = {}
    for i, name in enumerate(names):
        if name in seen:
            raise InputError(f"{path}: duplicate image name {name!r} (rows {seen[name] + 1} and {i + 1})")
        seen[name] = i
    has_ctf = "rlnDefocusU" in columns
    deg = np.deg2rad
    return ParticleTable(
        rot_rad=deg(_column(path, columns, rows, "rlnAngleRot")),
        tilt_rad=deg(_column(path, columns, rows, "rlnAngleTilt")),
        psi_rad=deg(_column(path, columns, rows, "rlnAnglePsi")),
        origin_px=origin,
        defocus_u_angstrom=_column(path, columns, rows, "rlnDefocusU", default=0.0),
        defocus_v_angstrom=_column(path, columns, rows, "rlnDefocusV", default=0.0) if "rlnDefocusV" in columns
        else _column(path, columns, rows, "rlnDefocusU", default=0.0),
        defocus_angle_rad=deg(_column(path, columns, rows, "rlnDefocusAngle", default=0.0)),
        phase_shift_rad=deg(_column(path, columns, rows, "rlnPhaseShift", default=0.0)),
        ctf_bfactor_angstrom2=_column(path, columns, rows, "rlnCtfBfactor", default=0.0),
        ctf_scale=_column(path, columns, rows, "rlnCtfScalefactor", default=1.0),
        optics_group=group,
        random_subset=_column(path, columns, rows, "rlnRandomSubset", int, 0).astype(np.int64),
        image_index=index,
        stack_path=stacks,
        image_name=np.array(names, dtype=object),
        optics=optics,
        has_ctf=has_ctf,
        columns=list(columns),
        rows=rows,
        optics_columns=list(optics_columns),
        optics_rows=optics_rows,
        source=str(path),
        project_dir=str(project),
    )


def _optics(path, columns, rows, particle_columns, particle_rows):
    groups = {}
    for row in rows:
        get = lambda name, default=None: _column(path, columns, [row], name, default=default)[0]  # noqa: E731
        number = int(get("rlnOpticsGroup"))
        if number in groups:
            raise InputError(f"{path}: data_optics has two rows with _rlnOpticsGroup {number}; expected one row per optics group")
        apix = get("rlnImagePixelSize", 0.0)
        if apix <= 0:
            raise InputError(f"{path}: data_optics group {number}: _rlnImagePixelSize must be > 0, got {apix}")
        name = row[columns.index("rlnOpticsGroupName")] if "rlnOpticsGroupName" in columns else f"opticsGroup{number}"
        groups[number] = OpticsGroup(
            number, name, float(apix), int(get("rlnImageSize", 0.0)), float(get("rlnVoltage", 300.0)),
            float(get("rlnSphericalAberration", 2.7)), float(get("rlnAmplitudeContrast", 0.1)),
        )
    return groups


def _optics_30(path, columns, rows):
    """STAR 3.0: one optics group per distinct (pixel size, voltage, Cs, Q0)."""
    if "rlnImagePixelSize" in columns:
        apix = _column(path, columns, rows, "rlnImagePixelSize")
    elif "rlnDetectorPixelSize" in columns and "rlnMagnification" in columns:
        apix = _column(path, columns, rows, "rlnDetectorPixelSize") * 1e4 / _column(path, columns, rows, "rlnMagnification")
    else:
        raise InputError(f"{path}: STAR 3.0 file without a pixel size (_rlnImagePixelSize or _rlnDetectorPixelSize + _rlnMagnification)")
    if np.any(apix <= 0):
        raise InputError(f"{path}: pixel size must be > 0, got {apix.min()}")
    kv = _column(path, columns, rows, "rlnVoltage", default=300.0)
    cs = _column(path, columns, rows, "rlnSphericalAberration", default=2.7)
    q0 = _column(path, columns, rows, "rlnAmplitudeContrast", default=0.1)
    keys = list(zip(np.round(apix, 6), kv, cs, q0))
    numbers, groups, group = {}, {}, np.empty(len(rows), np.int64)
    for i, key in enumerate(keys):
        if key not in numbers:
            numbers[key] = len(numbers) + 1
            groups[numbers[key]] = OpticsGroup(numbers[key], f"opticsGroup{numbers[key]}", float(key[0]), 0, float(key[1]), float(key[2]), float(key[3]))
        group[i] = numbers[key]
    return groups, group


def _image_locations(path, names, project: Path):
    """0-based indices and absolute stack paths of ``000123@stack.mrcs`` names: a relative stack is looked for
    in the project directory first (RELION's rule), then beside the STAR file; when in neither, the project
    directory's path is kept (and `lorefine check` names both places)."""
    folder = Path(path).parent
    index = np.empty(len(names), np.int64)
    stacks = np.empty(len(names), dtype=object)
    known: dict[str, str] = {}
    for i, name in enumerate(names):
        number, sep, stack = name.partition("@")
        if not sep or not number.isdigit() or int(number) < 1 or not stack:
            raise InputError(f"{path}: _rlnImageName {name!r}: expected 000123@stack.mrcs (1-based index)")
        if int(number) > MAX_INTEGER:
            raise InputError(f"{path}: _rlnImageName {name[:40]!r}: image number {number[:20]}… is beyond any stack (at most {MAX_INTEGER:,})")
        index[i] = int(number) - 1
        if stack not in known:
            known[stack] = resolve_relion_path(stack, project, folder)
        stacks[i] = known[stack]
    return index, stacks


def resolve_relion_path(name, project_dir, fallback_dir) -> str:
    """Absolute path of a file name written in a RELION file: as RELION opens it (relative to the project
    directory, its working directory), else relative to ``fallback_dir`` (the folder of the file that
    names it) when it exists only there, else the project directory's path."""
    if os.path.isabs(name):
        return str(Path(name))
    first = os.path.normpath(os.path.join(project_dir, name))
    if os.path.exists(first):
        return first
    second = os.path.normpath(os.path.join(fallback_dir, name))
    return second if os.path.exists(second) else first


def resolved(path, what: str | None = None) -> Path:
    """``path`` made absolute with symlinks followed; a symlink loop is an InputError naming ``what``."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as error:  # Python < 3.13 raises RuntimeError for a loop
        raise InputError(f"{what or path}: cannot resolve {path} ({error})") from None


def _format(value):
    return f"{value:.6f}"


_OPTICS_COLUMNS = ("rlnOpticsGroupName", "rlnOpticsGroup", "rlnImagePixelSize", "rlnVoltage", "rlnSphericalAberration",
                   "rlnAmplitudeContrast", "rlnImageSize", "rlnImageDimensionality")
# STAR 3.0 per-particle optics columns; in 3.1 they live in data_optics (as relion_convert_star moves them)
_OPTICS_30 = ("rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnVoltage", "rlnSphericalAberration",
              "rlnAmplitudeContrast")


def _optics_row(group: OpticsGroup, image_size_px: int) -> list[str]:
    return [group.name, str(group.number), _format(group.pixel_size_angstrom), _format(group.voltage_kv), _format(group.cs_mm),
            _format(group.amplitude_contrast), str(int(image_size_px)), "2"]


def _image_sizes(table: ParticleTable, image_size_px) -> dict[int, int]:
    """rlnImageSize of every optics group: ``image_size_px`` when given, else the table's, else the width of
    the group's first stack (STAR 3.0 files do not say)."""
    sizes = {}
    for number, group in table.optics.items():
        size = image_size_px or group.image_size_px
        if not size:
            first = np.flatnonzero(table.optics_group == number)
            if len(first) == 0:
                continue
            from lorefine_mpi.io.mrc import stack_shape

            size = stack_shape(table.stack_path[first[0]])[-1]
        sizes[number] = int(size)
    return sizes


def write_star(path, table: ParticleTable, *, rot_rad=None, tilt_rad=None, psi_rad=None, origin_px=None,
               image_name=None, extra_columns=None, image_size_px=None) -> None:
    """Write a STAR 3.1 file: data_optics, then data_particles with every column of ``table``.

    The one writer of STAR files. New poses (radians, px) replace their columns (origins as
    _rlnOriginXAngst/YAngst in Å); image_name (n,) replaces _rlnImageName; extra_columns maps a column name
    (without '_') to (n,) values; image_size_px sets _rlnImageSize of every optics group (images re-boxed).
    A STAR 3.0 table becomes 3.1: its per-particle optics columns move to data_optics, whose
    _rlnImageSize is read from the stacks. Written to a temporary name, then renamed.
    """
    columns = list(table.columns)
    rows = [list(r) for r in table.rows]
    apix = table.pixel_size_angstrom()
    sizes = _image_sizes(table, image_size_px)

    def drop(name):
        if name in columns:
            j = columns.index(name)
            columns.pop(j)
            for r in rows:
                r.pop(j)

    def put(name, values, fmt=_format):
        if name not in columns:
            columns.append(name)
            for r in rows:
                r.append("")
        j = columns.index(name)
        for r, v in zip(rows, values):
            r[j] = fmt(v) if not isinstance(v, str) else v

    if "rlnOriginX" in columns or "rlnOriginY" in columns:  # STAR 3.0 → 3.1 origins
        origin_px = table.origin_px if origin_px is None else origin_px
        drop("rlnOriginX")
        drop("rlnOriginY")
    for name, values in (("rlnAngleRot", rot_rad), ("rlnAngleTilt", tilt_rad), ("rlnAnglePsi", psi_rad)):
        if values is not None:
            put(name, np.rad2deg(np.asarray(values)))
    if origin_px is not None:
        origin_angst = np.asarray(origin_px) * apix[:, None]
        put("rlnOriginXAngst", origin_angst[:, 0])
        put("rlnOriginYAngst", origin_angst[:, 1])
    if image_name is not None:
        put("rlnImageName", list(image_name))
    if "rlnOpticsGroup" not in columns:
        put("rlnOpticsGroup", table.optics_group, fmt=lambda v: str(int(v)))
    for name, values in (extra_columns or {}).items():
        put(name, values if isinstance(values, list) else np.asarray(values))
    if table.optics_rows:
        optics_columns = list(table.optics_columns)
        optics_rows = [list(r) for r in table.optics_rows]
        if "rlnImageSize" not in optics_columns:
            optics_columns.append("rlnImageSize")
            for r in optics_rows:
                r.append("0")
        j, g = optics_columns.index("rlnImageSize"), optics_columns.index("rlnOpticsGroup")
        for r in optics_rows:
            r[j] = str(sizes.get(int(r[g]), r[j]))
    else:
        for name in _OPTICS_30:
            drop(name)
        optics_columns = list(_OPTICS_COLUMNS)
        optics_rows = [_optics_row(g, sizes.get(g.number, 0)) for g in table.optics.values()]
    text = _blocks_text([("optics", optics_columns, optics_rows), ("particles", columns, rows)])
    atomic_write_text(path, text)


def _blocks_text(blocks) -> str:
    lines = []
    for name, columns, rows in blocks:
        lines += ["", "# version 30001", "", f"data_{name}", "", "loop_"]
        lines += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
        lines += [" ".join(map(_quote, r)) for r in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return f'"{value}"' if (not value or " " in value or "\t" in value) else value


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (`io.files.replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def relative_image_names(table: ParticleTable, directory) -> np.ndarray:
    """rlnImageName values that find the same stacks from ``directory`` (RELION's working directory, the
    project directory): what a STAR file written for RELION carries, wherever the STAR file itself lies."""
    directory = Path(directory).resolve()
    relative = {s: os.path.relpath(s, directory) for s in dict.fromkeys(table.stack_path.tolist())}
    return np.array([f"{index + 1:06d}@{relative[stack]}" for index, stack in zip(table.image_index, table.stack_path)], dtype=object)
