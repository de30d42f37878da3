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
from lorefine_mpi.kernels import BACKENDS
from lorefine_mpi.search import options
from lorefine_mpi.search.score import LIKELIHOODS

# the `search` keys a module may set for itself (None: the global value)
MODULE_SEARCH_KEYS = ("cone_half_angle_deg", "psi_half_range_deg", "max_shift_px", "prior_sigma_deg", "prior_sigma_px")


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """One module: its mask and, where it differs from the global `search`, its own search window and prior.

    centre_px: (x, y, z) px from the box centre about which the module turns; None = its centre of mass.
    rotate_relative_to: RELION's rlnBodyRotateRelativeTo as a module name (recorded; lorefine's cone and
    prior are isotropic, so the frame the rotation is expressed in does not change the search).
    """

    name: str
    mask: str | None  # None for the whole map (conventional SPA)
    cone_half_angle_deg: float | None = None
    psi_half_range_deg: float | None = None
    max_shift_px: float | None = None
    prior_sigma_deg: float | str | None = None
    prior_sigma_px: float | str | None = None
    centre_px: tuple[float, float, float] | None = None
    rotate_relative_to: str | None = None

    def search(self, search: "SearchConfig") -> "SearchConfig":
        """The global search settings with this module's own values in place."""
        own = {k: getattr(self, k) for k in MODULE_SEARCH_KEYS if getattr(self, k) is not None}
        return dataclasses.replace(search, **own) if own else search


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
    estimate: str = "map"
    likelihood: str = "fixed_amplitude"


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    mode: str = "subtract"
    ctf: str = "auto"


@dataclasses.dataclass(frozen=True)
class ReconstructionConfig:
    padding: int = 2
    weight_floor: float = 1e-3
    gridding_iterations: int = 10
    poses: str = "posterior"
    max_poses: int = 2
    posterior_mass: float = 0.99


@dataclasses.dataclass(frozen=True)
class ConvergenceConfig:
    """``iterations: auto``: iterate until every module's median pose change from the last iteration is below
    ``step_fraction`` of its angular step and of the shift step, at most ``max_iterations`` times."""

    step_fraction: float = 0.5
    max_iterations: int = 6


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """The array back-end of the search and the reconstruction (`kernels`)."""

    backend: str = "cpu"


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    class_spacing_deg: float = 7.5
    unit_size: int = 64
    stall_timeout_s: float = 600.0


@dataclasses.dataclass(frozen=True)
class SubtractedConfig:
    """Particles of modules with the rest of the complex subtracted, written at the end of a run."""

    modules: tuple[str, ...] = ()
    box_px: int | None = None


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """What `lorefine refine` does after its last iteration (`refine.finish`); not in the checkpoint's
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
    compute: ComputeConfig = ComputeConfig()
    convergence: ConvergenceConfig = ConvergenceConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    iterations: int | str = "auto"
    seed: int = 0
    project_dir: str = ""  # RELION's project directory: relative image and mask names in STAR files resolve here
    subtracted: SubtractedConfig = SubtractedConfig()
    # the consensus's own unfiltered half maps (RELION Refine3D's run_half1/2_class001_unfil.mrc, from the STAR file's
    # rlnRandomSubset halves): used as they are instead of reconstructed from the consensus poses; () = reconstruct
    consensus_half_maps: tuple = ()
    source: str = ""  # the config file this came from


# key → (kind, check, message); kinds: "float", "int", "choice", "path", "optional_float", "prior" (auto, null or a float),
# "auto_float" (auto or a float), "auto_int" (auto or an integer)
_RULES: dict[str, tuple[str, Any, str]] = {
    "search.strategy": ("choice", options.STRATEGIES.names(), options.STRATEGIES.expected()),
    "search.cone_half_angle_deg": ("float", lambda v: 0 < v <= 90, "must be in (0, 90]"),
    "search.angular_step_deg": ("float", lambda v: 0 < v <= 30, "must be in (0, 30]"),
    "search.psi_half_range_deg": ("float", lambda v: 0 <= v <= 180, "must be in [0, 180]"),
    "search.psi_step_deg": ("float", lambda v: 0 < v <= 30, "must be in (0, 30]"),
    "search.max_shift_px": ("float", lambda v: 0 <= v <= 32, "must be in [0, 32]"),
    "search.shift_step_px": ("int", lambda v: 1 <= v <= 8, "must be a whole number of pixels in [1, 8]"),
    "search.n_random_angles": ("int", lambda v: v >= 1, "must be >= 1"),
    "search.mask_diameter_px": ("optional_float", lambda v: v > 0, "must be > 0 (or null for automatic)"),
    "search.angle_refinement": ("choice", options.ANGLE_REFINEMENTS.names(), options.ANGLE_REFINEMENTS.expected()),
    "search.mean_motion": ("choice", options.MEAN_MOTIONS.names(), options.MEAN_MOTIONS.expected()),
    "search.prior_sigma_deg": ("prior", lambda v: 0 < v <= 90, "must be auto, null or a number in (0, 90]"),
    "search.prior_sigma_px": ("prior", lambda v: 0 < v <= 32, "must be auto, null or a number in (0, 32]"),
    "search.estimate": ("choice", options.ESTIMATORS.names(), options.ESTIMATORS.expected()),
    "search.likelihood": ("choice", LIKELIHOODS.names(), LIKELIHOODS.expected()),
    "search.max_resolution_angstrom": ("auto_float", lambda v: v > 0, "must be auto or a resolution in Å (> 0)"),
    "score.mode": ("choice", options.SCORE_MODES.names(), options.SCORE_MODES.expected()),
    "score.ctf": ("choice", ("auto", True, False), "one of auto, true, false"),
    "reconstruction.padding": ("int", lambda v: v in (1, 2, 3, 4), "must be 1, 2, 3 or 4"),
    "reconstruction.weight_floor": ("float", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "reconstruction.gridding_iterations": ("int", lambda v: 0 <= v <= 50, "must be an integer in [0, 50]"),
    "reconstruction.poses": ("choice", options.RECONSTRUCTION_POSES.names(), options.RECONSTRUCTION_POSES.expected()),
    "reconstruction.max_poses": ("int", lambda v: 1 <= v <= 64, "must be an integer in [1, 64]"),
    "reconstruction.posterior_mass": ("float", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "compute.backend": ("choice", tuple(BACKENDS), "one of " + ", ".join(BACKENDS)),
    "parallel.class_spacing_deg": ("float", lambda v: 0 < v <= 90, "must be in (0, 90]"),
    "parallel.unit_size": ("int", lambda v: v >= 1, "must be >= 1"),
    "subtracted.box_px": ("optional_float", lambda v: v >= 16 and v == int(v) and v % 2 == 0,
                          "must be an even number of pixels >= 16 (or null for the particles' box)"),
    "postprocess.enabled": ("choice", (True, False), "one of true, false"),
    "postprocess.bfactor": ("auto_float", lambda v: -5000 <= v <= 5000, "must be auto or a B-factor in Å² in [-5000, 5000]"),
    "postprocess.local_resolution": ("choice", (True, False), "one of true, false"),
    "postprocess.locres_radius_angstrom": ("float", lambda v: 0 < v <= 1000, "must be in (0, 1000]"),
    "postprocess.locres_edge_angstrom": ("float", lambda v: 0 < v <= 1000, "must be in (0, 1000]"),
    "postprocess.locres_step_angstrom": ("float", lambda v: 0 < v <= 1000, "must be in (0, 1000]"),
    "postprocess.motion_components": ("int", lambda v: 0 <= v <= 6, "must be an integer in [0, 6]"),
    "parallel.stall_timeout_s": ("float", lambda v: 1 <= v <= 86400, "must be in [1, 86400] seconds"),
    "iterations": ("auto_int", lambda v: 1 <= v <= 100, "must be auto or a whole number in [1, 100]"),
    "convergence.step_fraction": ("float", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "convergence.max_iterations": ("int", lambda v: 1 <= v <= 100, "must be in [1, 100]"),
    "seed": ("int", lambda v: v >= 0, "must be >= 0"),
}
_SECTIONS = {"search": SearchConfig, "score": ScoreConfig, "reconstruction": ReconstructionConfig, "parallel": ParallelConfig,
             "compute": ComputeConfig, "convergence": ConvergenceConfig, "postprocess": PostprocessConfig}
_TOP = ("particles", "consensus_map", "consensus_half_maps", "modules", "output", "project_dir", "search", "score", "reconstruction", "parallel",
        "compute", "convergence", "subtracted", "postprocess", "iterations", "seed")
_MODULE_KEYS = ("name", "mask") + MODULE_SEARCH_KEYS + ("centre_px", "rotate_relative_to")
_REQUIRED = ("particles", "consensus_map", "modules", "output")


def unknown_key(key_path: str, key: str, valid) -> InputError:
    prefixed = [str(v) for v in valid if len(str(key)) >= 3 and str(v).startswith(str(key))]  # 'cone' → cone_half_angle_deg
    close = prefixed[:1] or difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
    return InputError(f"{key_path}: unknown key{hint}")


def checked_value(path: str, value, rules=None, where: str | None = None):
    """``value`` checked against the rule of key ``path``; errors name ``where`` (default: the key)."""
    kind, check, expected = (rules or _RULES)[path]
    path = where or path
    if kind == "choice":
        if isinstance(value, str) and value.lower() in ("true", "false") and True in check:
            value = value.lower() == "true"
        if not any(type(value) is type(c) and value == c for c in check):  # 1 == True, but 1 is not a choice
            raise InputError(f"{path}: expected {expected}, got {value!r}")
        return value
    if kind == "optional_float" and value is None:
        return None
    if kind in ("auto_float", "auto_int"):
        if options.is_auto(value):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: {expected}, got {value!r}")
        kind = kind.removeprefix("auto_")
    if kind == "prior":
        if value is None or options.is_auto(value):
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
    if p.is_absolute():
        return str(p)
    try:
        return str((folder / p).resolve())
    except (RuntimeError, OSError) as error:  # a symlink loop (RuntimeError before Python 3.13)
        raise InputError(f"{key}: cannot resolve {value!r} ({error})") from None


def _modules(value, folder: Path, project_dir: str, consensus_map: str) -> tuple[ModuleConfig, ...]:
    if value == "whole":
        return (ModuleConfig("whole", None),)
    if isinstance(value, str) and value.strip().lower().endswith(".star"):
        return _bodies_star(resolve_path("modules", value, folder), project_dir, consensus_map)
    if not isinstance(value, list) or not value:
        raise InputError(f"modules: expected a list of {{name, mask}}, a RELION bodies STAR file or 'whole', got {value!r}")
    out, names = [], set()
    for i, item in enumerate(value):
        where = f"modules[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected {{name: ..., mask: ...}}, got {item!r}")
        for key in item:
            if key not in _MODULE_KEYS:
                raise unknown_key(f"{where}.{key}", key, _MODULE_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise InputError(f"{where}.name: expected a name of letters, digits, '_' or '-', got {name!r}")
        if name.lower() in (n.lower() for n in names):  # a file system that ignores case would give them one folder
            same = next(n for n in names if n.lower() == name.lower())
            raise InputError(f"{where}.name: duplicate module name {name!r}" + (f" (as {same!r} on a file system that ignores case)" if same != name else ""))
        names.add(name)
        if "mask" not in item:
            raise InputError(f"{where}.mask: required (a soft mask MRC of this module)")
        own = {}
        for key in MODULE_SEARCH_KEYS:
            if item.get(key) is not None:
                own[key] = checked_value(f"search.{key}", item[key], where=f"{where}.{key}")
        centre = item.get("centre_px")
        if centre is not None:
            if not isinstance(centre, list) or len(centre) != 3 or not all(
                    isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in centre):
                raise InputError(f"{where}.centre_px: expected [x, y, z] in px from the box centre, got {centre!r}")
            own["centre_px"] = tuple(float(c) for c in centre)
        if item.get("rotate_relative_to") is not None:
            own["rotate_relative_to"] = str(item["rotate_relative_to"])
        out.append(ModuleConfig(name, resolve_path(f"{where}.mask", item["mask"], folder), **own))
    for i, m in enumerate(out):
        if m.rotate_relative_to is not None and (m.rotate_relative_to not in names or m.rotate_relative_to == m.name):
            raise InputError(f"modules[{i}].rotate_relative_to: expected the name of another module, got {m.rotate_relative_to!r}")
    return tuple(out)


def _bodies_star(path: str, project_dir: str, consensus_map: str) -> tuple[ModuleConfig, ...]:
    """RELION's multi-body bodies file: one row per body (rlnBodyMaskName; optional rlnBodyRotateRelativeTo,
    rlnBodySigmaAngles in degrees, rlnBodySigmaOffsetAngst in Å or the older rlnBodySigmaOffset in px).
    Body K becomes module ``bodyK``; the σ become that module's prior; mask names resolve as RELION
    resolves them (the project directory first, then the bodies file's folder)."""
    from lorefine_mpi.io.star import parse_star, resolve_relion_path

    blocks = parse_star(path)
    columns, rows = next(((c, r) for c, r in blocks.values() if "rlnBodyMaskName" in c), ([], []))
    if not rows:
        raise InputError(f"{path}: not a RELION bodies file (expected a table with _rlnBodyMaskName, one row per body)")
    get = {name: columns.index(name) for name in columns}
    out = []
    for k, row in enumerate(rows, 1):
        where = f"{path}: body {k}"
        own = {}

        def number(column):
            try:
                return float(row[get[column]])
            except ValueError:
                raise InputError(f"{where}: _{column}: expected a number, got {row[get[column]]!r}") from None

        if "rlnBodySigmaAngles" in get:
            own["prior_sigma_deg"] = checked_value("search.prior_sigma_deg", number("rlnBodySigmaAngles"), where=f"{where}: _rlnBodySigmaAngles")
        if "rlnBodySigmaOffsetAngst" in get:
            from lorefine_mpi.io.mrc import voxel_size_angstrom

            sigma_px = number("rlnBodySigmaOffsetAngst") / voxel_size_angstrom(consensus_map)
            own["prior_sigma_px"] = checked_value("search.prior_sigma_px", sigma_px, where=f"{where}: _rlnBodySigmaOffsetAngst / pixel size")
        elif "rlnBodySigmaOffset" in get:
            own["prior_sigma_px"] = checked_value("search.prior_sigma_px", number("rlnBodySigmaOffset"), where=f"{where}: _rlnBodySigmaOffset")
        if "rlnBodyRotateRelativeTo" in get:
            other = number("rlnBodyRotateRelativeTo")
            if other != int(other) or not 1 <= other <= len(rows) or other == k:
                raise InputError(f"{where}: _rlnBodyRotateRelativeTo: expected the number of another body (1-{len(rows)}), got {row[get['rlnBodyRotateRelativeTo']]!r}")
            own["rotate_relative_to"] = f"body{int(other)}"
        mask = resolve_relion_path(row[get["rlnBodyMaskName"]], project_dir, str(Path(path).parent))
        out.append(ModuleConfig(f"body{k}", mask, **own))
    return tuple(out)


def _subtracted(value, modules) -> SubtractedConfig:
    if value is None:
        return SubtractedConfig()
    if not isinstance(value, dict):
        raise InputError(f"subtracted: expected a mapping {{modules: [...], box_px: ...}}, got {value!r}")
    for key in value:
        if key not in ("modules", "box_px"):
            raise unknown_key(f"subtracted.{key}", key, ("modules", "box_px"))
    names = [m.name for m in modules]
    chosen = value.get("modules") or []
    if chosen == "all":
        chosen = names
    if not isinstance(chosen, list) or any(c not in names for c in chosen):
        raise InputError(f"subtracted.modules: expected 'all' or a list of module names ({', '.join(names)}), got {chosen!r}")
    box = checked_value("subtracted.box_px", value.get("box_px"))
    return SubtractedConfig(tuple(dict.fromkeys(chosen)), None if box is None else int(box))


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
    project_dir = str(Path.cwd()) if raw.get("project_dir") is None else resolve_path("project_dir", raw["project_dir"], folder)
    consensus_map = resolve_path("consensus_map", raw["consensus_map"], folder)
    modules = _modules(raw["modules"], folder, project_dir, consensus_map)
    search = sections["search"]
    for where, s in [("search", search)] + [(f"modules ({m.name})", m.search(search)) for m in modules]:
        if s.cone_half_angle_deg < s.angular_step_deg:  # the grid's covering radius is about 0.77 steps
            raise InputError(
                f"{where}.cone_half_angle_deg: must be >= search.angular_step_deg ({s.angular_step_deg:g}) so that every "
                f"cone holds a direction of the grid, got {s.cone_half_angle_deg:g}"
            )
    top = {k: checked_value(k, raw[k]) for k in ("iterations", "seed") if k in raw}
    return Config(
        consensus_half_maps=_half_maps(raw.get("consensus_half_maps"), folder),
        particles=resolve_path("particles", raw["particles"], folder),
        consensus_map=consensus_map,
        modules=modules,
        output=resolve_path("output", raw["output"], folder),
        project_dir=project_dir,
        subtracted=_subtracted(raw.get("subtracted"), modules),
        source=source,
        **sections,
        **top,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise InputError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path) -> Config:
    """Read and validate a YAML config file (paths resolved against its folder)."""
    path = Path(path)
    return config_from_dict(read_yaml(path), resolved_folder(path), str(path))


def read_yaml(path):
    """The parsed contents of a YAML config file (a regular file; UTF-8, or UTF-16 with a byte-order mark, as YAML
    allows; a key given twice in one mapping is refused)."""
    from lorefine_mpi.io.files import regular_input

    path = regular_input(path, "config file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read the config ({error.strerror or error})") from None
    try:
        raw = yaml.load(data, Loader=_UniqueKeyLoader)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error).splitlines()[0]
        kind = "YAML syntax error" if mark else "not a YAML text file (UTF-8, or UTF-16 with a byte-order mark)"
        raise InputError(f"{path}: {kind}{where}: {problem}") from None
    return raw


def resolved_folder(path: Path) -> Path:
    try:
        return path.resolve().parent
    except (RuntimeError, OSError) as error:
        raise InputError(f"{path}: cannot resolve it ({error})") from None


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (absolute paths), for results files and logs."""
    out = dataclasses.asdict(cfg)
    out.pop("source")
    modules = cfg.modules
    out["modules"] = "whole" if modules[0].mask is None else [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(m).items() if v is not None} for m in modules
    ]
    out["subtracted"] = {"modules": list(cfg.subtracted.modules), "box_px": cfg.subtracted.box_px}
    out["consensus_half_maps"] = list(cfg.consensus_half_maps) or None
    return out


def _half_maps(value, folder: Path) -> tuple:
    """``consensus_half_maps``: null (reconstruct them) or a list of two MRC paths (half 1, half 2)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"consensus_half_maps: expected a list of two MRC files (half 1, half 2) or null, got {value!r}")
    return tuple(resolve_path(f"consensus_half_maps[{i}]", v, folder) for i, v in enumerate(value))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def search_fingerprint(cfg: Config) -> dict:
    """The settings and input contents that change per-particle results; a checkpoint made with others is
    refused. The maps feed later iterations, so the reconstruction settings count too; the particle stacks
    are identified by the STAR file that names them (hashing them would read every image)."""
    d = config_to_dict(cfg)
    inputs = [cfg.particles, cfg.consensus_map, *cfg.consensus_half_maps] + [m.mask for m in cfg.modules if m.mask is not None]
    keys = ("particles", "consensus_map", "consensus_half_maps", "modules", "search", "score", "reconstruction", "compute", "iterations",
            "convergence", "seed")
    return {k: d[k] for k in keys} | {
        "input_sha256": {path: _sha256(path) for path in inputs}
    }


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
