"""The run configuration: YAML → frozen, validated dataclasses.

Every key, its type, range and default is declared once here (`configs/default.yaml` documents them
for users). A wrong key, type or value raises `InputError` naming the dotted key path, the value and
what was expected; an unknown key gets the closest valid one suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

from lorefine_mpi.errors import InputError


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    name: str
    mask: str | None  # None for the whole map (conventional SPA)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    strategy: str = "separate"
    cone_half_angle_deg: float = 10.0
    angular_step_deg: float = 2.0
    psi_half_range_deg: float = 6.0
    psi_step_deg: float = 2.0
    max_shift_px: float = 4.0
    shift_step_px: float = 1.0
    n_random_angles: int = 10
    mask_diameter_px: float | None = None
    angle_refinement: str = "quadratic"
    mean_motion: str = "remove"
    prior_sigma_deg: float | str | None = "auto"
    prior_sigma_px: float | str | None = "auto"
    max_resolution_angstrom: float | str = "auto"


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    mode: str = "subtract"
    ctf: str = "auto"


@dataclasses.dataclass(frozen=True)
class ReconstructionConfig:
    padding: int = 2
    weight_floor: float = 1e-3
    gridding_iterations: int = 10


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    class_spacing_deg: float = 7.5
    unit_size: int = 64


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """What `lorefine refine` does after its last iteration (`report.finish`); not in the checkpoint's
    fingerprint: a resume may change it."""

    enabled: bool = True
    bfactor: float | str = "auto"
    local_resolution: bool = True
    locres_radius_angstrom: float = 12.5
    locres_edge_angstrom: float = 25.0
    locres_step_angstrom: float = 25.0
    motion_components: int = 2


@dataclasses.dataclass(frozen=True)
class Config:
    particles: str
    consensus_map: str
    modules: tuple[ModuleConfig, ...]
    output: str
    search: SearchConfig = SearchConfig()
    score: ScoreConfig = ScoreConfig()
    reconstruction: ReconstructionConfig = ReconstructionConfig()
    parallel: ParallelConfig = ParallelConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    iterations: int = 1
    seed: int = 0
    source: str = ""  # the config file this came from


# key → (kind, check, message); kinds: "float", "int", "choice", "path", "optional_float", "prior" (auto, null or a float),
# "auto_float" (auto or a float)
_RULES: dict[str, tuple[str, Any, str]] = {
    "search.strategy": ("choice", ("separate", "simultaneous"), "one of separate, simultaneous"),
    "search.cone_half_angle_deg": ("float", lambda v: 0 < v <= 90, "must be in (0, 90]"),
    "search.angular_step_deg": ("float", lambda v: 0 < v <= 30, "must be in (0, 30]"),
    "search.psi_half_range_deg": ("float", lambda v: 0 <= v <= 180, "must be in [0, 180]"),
    "search.psi_step_deg": ("float", lambda v: 0 < v <= 30, "must be in (0, 30]"),
    "search.max_shift_px": ("float", lambda v: 0 <= v <= 32, "must be in [0, 32]"),
    "search.shift_step_px": ("int", lambda v: 1 <= v <= 8, "must be a whole number of pixels in [1, 8]"),
    "search.n_random_angles": ("int", lambda v: v >= 1, "must be >= 1"),
    "search.mask_diameter_px": ("optional_float", lambda v: v > 0, "must be > 0 (or null for automatic)"),
    "search.angle_refinement": ("choice", ("quadratic", "none"), "one of quadratic, none"),
    "search.mean_motion": ("choice", ("remove", "keep"), "one of remove, keep"),
    "search.prior_sigma_deg": ("prior", lambda v: 0 < v <= 90, "must be auto, null or a number in (0, 90]"),
    "search.prior_sigma_px": ("prior", lambda v: 0 < v <= 32, "must be auto, null or a number in (0, 32]"),
    "search.max_resolution_angstrom": ("auto_float", lambda v: v > 0, "must be auto or a resolution in Å (> 0)"),
    "score.mode": ("choice", ("subtract", "composite"), "one of subtract, composite"),
    "score.ctf": ("choice", ("auto", True, False), "one of auto, true, false"),
    "reconstruction.padding": ("int", lambda v: v in (1, 2, 3, 4), "must be 1, 2, 3 or 4"),
    "reconstruction.weight_floor": ("float", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "reconstruction.gridding_iterations": ("int", lambda v: 0 <= v <= 50, "must be an integer in [0, 50]"),
    "parallel.class_spacing_deg": ("float", lambda v: 0 < v <= 90, "must be in (0, 90]"),
    "parallel.unit_size": ("int", lambda v: v >= 1, "must be >= 1"),
    "postprocess.enabled": ("choice", (True, False), "one of true, false"),
    "postprocess.bfactor": ("auto_float", lambda v: -5000 <= v <= 5000, "must be auto or a B-factor in Å² in [-5000, 5000]"),
    "postprocess.local_resolution": ("choice", (True, False), "one of true, false"),
    "postprocess.locres_radius_angstrom": ("float", lambda v: 0 < v <= 1000, "must be in (0, 1000]"),
    "postprocess.locres_edge_angstrom": ("float", lambda v: 0 < v <= 1000, "must be in (0, 1000]"),
    "postprocess.locres_step_angstrom": ("float", lambda v: 0 < v <= 1000, "must be in (0, 1000]"),
    "postprocess.motion_components": ("int", lambda v: 0 <= v <= 6, "must be an integer in [0, 6]"),
    "iterations": ("int", lambda v: 1 <= v <= 100, "must be in [1, 100]"),
    "seed": ("int", lambda v: v >= 0, "must be >= 0"),
}
_SECTIONS = {"search": SearchConfig, "score": ScoreConfig, "reconstruction": ReconstructionConfig, "parallel": ParallelConfig,
             "postprocess": PostprocessConfig}
_TOP = ("particles", "consensus_map", "modules", "output", "search", "score", "reconstruction", "parallel", "postprocess",
        "iterations", "seed")
_REQUIRED = ("particles", "consensus_map", "modules", "output")


def unknown_key(key_path: str, key: str, valid) -> InputError:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
    return InputError(f"{key_path}: unknown key{hint}")


def checked_value(path: str, value, rules=None):
    kind, check, expected = (rules or _RULES)[path]
    if kind == "choice":
        if isinstance(value, str) and value.lower() in ("true", "false") and True in check:
            value = value.lower() == "true"
        if not any(type(value) is type(c) and value == c for c in check):  # 1 == True, but 1 is not a choice
            raise InputError(f"{path}: expected {expected}, got {value!r}")
        return value
    if kind == "optional_float" and value is None:
        return None
    if kind == "auto_float":
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: {expected}, got {value!r}")
    if kind == "prior":
        if value is None or value == "auto":
            return value
        if isinstance(value, str) or isinstance(value, bool) or not isinstance(value, (int, float)) or not check(value):
            raise InputError(f"{path}: {expected}, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        noun = "an integer" if kind == "int" else "a number"
        raise InputError(f"{path}: expected {noun}, got {value!r}")
    if kind == "int":
        if float(value) != int(value):
            raise InputError(f"{path}: expected an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise InputError(f"{path}: expected a finite number, got {value!r}")
    if not check(value):
        raise InputError(f"{path}: {expected}, got {value:g}")
    return value


def resolve_path(key: str, value, folder: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{key}: expected a file path, got {value!r}")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p).resolve())


def _modules(value, folder: Path) -> tuple[ModuleConfig, ...]:
    if value == "whole":
        return (ModuleConfig("whole", None),)
    if not isinstance(value, list) or not value:
        raise InputError(f"modules: expected a list of {{name, mask}} or 'whole', got {value!r}")
    out, names = [], set()
    for i, item in enumerate(value):
        where = f"modules[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected {{name: ..., mask: ...}}, got {item!r}")
        for key in item:
            if key not in ("name", "mask"):
                raise unknown_key(f"{where}.{key}", key, ("name", "mask"))
        name = item.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise InputError(f"{where}.name: expected a name of letters, digits, '_' or '-', got {name!r}")
        if name in names:
            raise InputError(f"{where}.name: duplicate module name {name!r}")
        names.add(name)
        if "mask" not in item:
            raise InputError(f"{where}.mask: required (a soft mask MRC of this module)")
        out.append(ModuleConfig(name, resolve_path(f"{where}.mask", item["mask"], folder)))
    return tuple(out)


def config_from_dict(raw, folder: Path, source: str = "") -> Config:
    """Validate a parsed YAML mapping; relative paths resolve against ``folder``."""
    if not isinstance(raw, dict):
        raise InputError(f"{source or 'config'}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    for key in raw:
        if key not in _TOP:
            raise unknown_key(str(key), key, _TOP)
    for key in _REQUIRED:
        if key not in raw:
            raise InputError(f"{key}: required key missing from {source or 'the config'}")
    sections = {}
    for name, cls in _SECTIONS.items():
        given = raw.get(name) or {}
        if not isinstance(given, dict):
            raise InputError(f"{name}: expected a mapping, got {given!r}")
        fields = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for key, value in given.items():
            if key not in fields:
                raise unknown_key(f"{name}.{key}", key, fields)
            values[key] = checked_value(f"{name}.{key}", value)
        sections[name] = cls(**values)
    search = sections["search"]
    if search.cone_half_angle_deg < search.angular_step_deg:  # the grid's covering radius is about 0.77 steps
        raise InputError(
            f"search.cone_half_angle_deg: must be >= search.angular_step_deg ({search.angular_step_deg:g}) so that every "
            f"cone holds a direction of the grid, got {search.cone_half_angle_deg:g}"
        )
    top = {k: checked_value(k, raw[k]) for k in ("iterations", "seed") if k in raw}
    return Config(
        particles=resolve_path("particles", raw["particles"], folder),
        consensus_map=resolve_path("consensus_map", raw["consensus_map"], folder),
        modules=_modules(raw["modules"], folder),
        output=resolve_path("output", raw["output"], folder),
        source=source,
        **sections,
        **top,
    )


def load_config(path) -> Config:
    """Read and validate a YAML config file (paths resolved against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}: YAML syntax error{where}: {problem}") from None
    return config_from_dict(raw, path.resolve().parent, str(path))


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (absolute paths), for results files and logs."""
    out = dataclasses.asdict(cfg)
    out.pop("source")
    modules = cfg.modules
    out["modules"] = "whole" if modules[0].mask is None else [{"name": m.name, "mask": m.mask} for m in modules]
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def search_fingerprint(cfg: Config) -> dict:
    """The settings and input contents that change per-particle results; a checkpoint made with others is
    refused. The maps feed later iterations, so the reconstruction settings count too; the particle stacks
    are identified by the STAR file that names them (hashing them would read every image)."""
    d = config_to_dict(cfg)
    inputs = [cfg.particles, cfg.consensus_map] + [m.mask for m in cfg.modules if m.mask is not None]
    return {k: d[k] for k in ("particles", "consensus_map", "modules", "search", "score", "reconstruction", "iterations", "seed")} | {
        "input_sha256": {path: _sha256(path) for path in inputs}
    }


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
