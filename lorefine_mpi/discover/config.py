"""The config of `lorefine discover`: a refine config without modules (`config.schema`), with an optional mask of the
whole particle and a ``discover:`` section (`DiscoverSettings`; `configs/default_discover.yaml` documents every key).

The keys it shares with refine (particles, consensus_map, consensus_half_maps, project_dir, output, seed, search,
score, reconstruction, parallel, compute) are validated by refine's own rules and reach the probes' searches and the
``lorefine.yaml`` written for refine unchanged. Keys of a refine run's later steps (modules, iterations, convergence,
postprocess, subtracted) are refused: discover runs one pass of the search per probe and finds the modules itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lorefine_mpi.config.schema import checked_value, config_from_dict, read_yaml, resolve_path, resolved_folder, unknown_key
from lorefine_mpi.errors import InputError

_RULES = {
    "discover.probes": ("auto_int", lambda v: 2 <= v <= 64, "must be auto or a whole number of probes in [2, 64]"),
    "discover.resolution_angstrom": ("auto_float", lambda v: v > 0, "must be auto or a resolution in Å (> 0)"),
    "discover.sample_size": ("int", lambda v: 50 <= v <= 10_000_000, "must be a whole number of particles in [50, 10000000]"),
    "discover.min_coherence": ("float", lambda v: 0 < v < 1, "must be in (0, 1)"),
    "discover.null_z": ("float", lambda v: 0 < v <= 100, "must be in (0, 100]"),
}
_REFUSED = {"modules": "discover finds the modules; give 'mask' (one mask of the whole particle) or nothing",
            "iterations": "discover searches every probe once (one iteration)",
            "convergence": "discover searches every probe once (one iteration)",
            "postprocess": "discover does not post-process; refine the modules it finds for that",
            "subtracted": "discover writes no subtracted particles; refine the modules it finds for that"}
_SHARED = ("particles", "consensus_map", "consensus_half_maps", "project_dir", "output", "seed", "search", "score", "reconstruction",
           "parallel", "compute")
_TOP = _SHARED + ("mask", "discover")


@dataclasses.dataclass(frozen=True)
class DiscoverSettings:
    """The ``discover:`` section.

    probes: the number of probe regions, or ``auto`` (`discover.probes.auto_probe_count`); resolution_angstrom: the
    resolution the auto probe count assumes, ``auto`` = 4 voxels (twice the Nyquist period); sample_size: the
    particles whose probe poses are searched (all when there are fewer); min_coherence and null_z: the coherence
    threshold's floor and its height in standard deviations of unrelated motion (`discover.coherence`)."""

    probes: int | str = "auto"
    resolution_angstrom: float | str = "auto"
    sample_size: int = 2000
    min_coherence: float = 0.1
    null_z: float = 5.0


@dataclasses.dataclass(frozen=True)
class DiscoverConfig:
    """A validated discover config: ``base`` is the refine `Config` of the shared keys (modules: the whole map, a
    placeholder the probes replace); mask: the whole particle's mask (absolute path) or None; raw: the shared keys as
    given (written into the probes' and refine's configs)."""

    base: object
    mask: str | None
    settings: DiscoverSettings
    raw: dict
    source: str

    @property
    def output(self) -> str:
        return self.base.output


def load_discover_config(path) -> DiscoverConfig:
    path = Path(path)
    return discover_config_from_dict(read_yaml(path), resolved_folder(path), str(path))


def discover_config_from_dict(raw, folder: Path, source: str = "") -> DiscoverConfig:
    """Validate a parsed discover YAML (relative paths resolve against ``folder``)."""
    if not isinstance(raw, dict):
        raise InputError(f"{source or 'config'}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    for key in raw:
        if key in _REFUSED:
            raise InputError(f"{key}: not a discover key ({_REFUSED[key]})")
        if key not in _TOP:
            raise unknown_key(str(key), key, _TOP)
    given = raw.get("discover") or {}
    if not isinstance(given, dict):
        raise InputError(f"discover: expected a mapping, got {given!r}")
    fields = [f.name for f in dataclasses.fields(DiscoverSettings)]
    values = {}
    for key, value in given.items():
        if key not in fields:
            raise unknown_key(f"discover.{key}", key, fields)
        values[key] = checked_value(f"discover.{key}", value, _RULES)
    shared = {k: raw[k] for k in _SHARED if k in raw}
    base = config_from_dict(shared | {"modules": "whole"}, folder, source)
    mask = None if raw.get("mask") is None else resolve_path("mask", raw["mask"], folder)
    return DiscoverConfig(base, mask, DiscoverSettings(**values), shared, source)
