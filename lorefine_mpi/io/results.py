"""``results.h5``: the refined parameters of every particle and module, and the run's checkpoint.

Schema (h5py; written by rank 0 only)
    root attrs
        lorefine_version, command_line, config_yaml (the resolved config),
        checkpoint_format (int, CHECKPOINT_FORMAT; `--continue` refuses a file of another format),
        consensus_halves (0/1: OUT/consensus/half1.mrc and half2.mrc, the consensus poses' half maps, are written),
        final_iteration, iterations_stopped_because (``iterations: auto``: the last iteration, once the poses settled or
        convergence.max_iterations was reached, and which of the two),
        search_fingerprint (JSON of the settings and input-file SHA-256 digests that change per-particle
        results; `--continue` refuses a config whose fingerprint differs and names what changed; its key
        ``stacks`` identifies the particle stacks, `io.mrc.stack_identity`: their sizes, modification times and
        the bytes of a sample of images, so a stack replaced between a stop and ``--continue`` is refused,
        `stack_changes`; checkpoints without it, of an earlier lorefine, resume with a warning),
        attempts (JSON list, one entry per start of the run, the first and every resume: {"started": ISO time,
        "ranks": number of processes, "command_line"}).
    /particles/image_name            (n,) str, rlnImageName of each particle, in STAR order
    /<stage>/                        one group per (iteration, module), e.g. ``iteration_01/large``
        attrs: iteration, module, n_units, complete (0/1), reconstructed (0/1), search_band_px (the score's band),
               prior_sigma (2,) the prior's widths σ_rot (rad) and σ_px of the search (NaN: flat), learned or given, cpu_seconds (JSON: CPU seconds
               of the search, the reconstruction and the writing of the outputs, summed over ranks),
               mean_rotation_removed_deg (3,) rotation vector and mean_shift_removed_px (3,) xyz of the
               mean motion taken out of the search's poses (``search.mean_motion``; zeros for ``keep``)
        unit_of_particle (n,) int32  the work unit of each particle (projection-class chunks)
        unit_done        (n_units,) int8, 1 once every particle of the unit is written
        search_matrix    (n, 3, 3) float64, the pose the search found (RELION A), consensus frame
        search_origin_px (n, 2) float64, its origin (RELION convention, px), consensus frame
        score            (n,) float32, the best CCC (Eq. 1)
        rest_scale       (n,) float32, k of the subtract mode (0 when not used, NaN where it could not be fitted)
        search_posterior_matrix (n, K, 3, 3) float64, search_posterior_origin_px (n, K, 2) float64, posterior_weight (n, K)
                         float32: the candidate poses a particle is inserted at and their posterior weights (K =
                         reconstruction.max_poses with reconstruction.poses: posterior, else 1: its estimate; unused
                         entries weigh 0), consensus frame (`search.local.PosePosterior`)
        angle_spread_deg (n,) float32, shift_spread_px (n,) float32: the posterior's RMS angle from the estimate and
                         RMS shift about its mean (the particle's uncertainty; rlnLorefineAngleSpread / ShiftSpread)
        status           (n,) int8, 0 pending, 1 done
        matrix, origin_px, posterior_matrix, posterior_origin_px  the module's final pose (the one in its particles.star)
                         and posterior poses (its map's): the
                         search's pose with the stage's mean motion taken out; written when the stage
                         completes (recomputed from the search's poses on every run, so a kill while it is
                         written loses nothing)
    /motion/                         written once after the last iteration (`refine.finish`; replaced by a rerun):
        the modules' motion per particle (`validation.motion`), complex frame, STAR order
        attrs: module_names, pairs, feature_names (JSON), centres_px (K, 3) xyz px from the box centre
        rotation_deg (K, n, 3) float64     each module's rotation vector (deg) away from its consensus pose
        shift_angstrom (K, n, 3) float64   its shift (Å), the component along the beam set to 0
        relative_rotation_deg, relative_shift_angstrom (P, n, 3) float64  module k (k ≥ 1) relative to module 0
        pca_mean (6P,), pca_eigenvalues (6P,), pca_variance_explained (6P,), pca_components (6P, 6P) (column i
        = component i over feature_names), pca_scores (n, 6P) float64

Crash safety: every dataset of a stage is created, at full size, when the stage starts, with early
allocation; afterwards only raw data changes. A unit is written data first, then its ``unit_done``
flag, then the file is flushed, so a unit whose flag is set is complete whatever happened after.
The default (oldest) HDF5 file format is used, so a killed writer does not leave the file marked open.
The /motion group is added to a copy of the file that then replaces it (`write_motion`), so a kill while it
is written leaves the checkpoint as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.io.files import identity


def search_fields(max_poses: int = 1) -> dict:
    """The search's datasets of a stage: name → (shape per particle, dtype); ``max_poses`` the stage's posterior poses."""
    return {
        "search_matrix": ((3, 3), np.float64),
        "search_origin_px": ((2,), np.float64),
        "score": ((), np.float32),
        "rest_scale": ((), np.float32),
        "search_posterior_matrix": ((max_poses, 3, 3), np.float64),
        "search_posterior_origin_px": ((max_poses, 2), np.float64),
        "posterior_weight": ((max_poses,), np.float32),
        "angle_spread_deg": ((), np.float32),
        "shift_spread_px": ((), np.float32),
        "status": ((), np.int8),
    }


def pose_fields(max_poses: int = 1) -> dict:
    """The final poses of a stage (the search's with the mean motion taken out)."""
    return {"matrix": ((3, 3), np.float64), "origin_px": ((2,), np.float64), "posterior_matrix": ((max_poses, 3, 3), np.float64),
            "posterior_origin_px": ((max_poses, 2), np.float64)}


FIELDS = search_fields()  # their names (the posterior's size is the stage's)
UNIT_FIELDS = tuple(f for f in FIELDS if f != "status")  # a work unit's result: `RefineEngine` search_unit's keys
POSE_FIELDS = pose_fields()
# 2: search_matrix/search_origin_px plus the final matrix/origin_px (mean motion); files without the
# attribute are format 1 (matrix/origin_px were the search's own poses); 3: the posterior's poses, weights and spreads
CHECKPOINT_FORMAT = 3


def stage_name(iteration: int, module: str) -> str:
    """The group of a stage (one iteration's search of one module): ``iteration_01/large``."""
    return f"iteration_{iteration:02d}/{module}"


def _write_rows(dataset, rows, values) -> None:
    """``dataset[rows] = values`` for ascending distinct rows, as one selection of whole rows (h5py's fancy
    indexing builds and checks the same selection in Python, several times slower for a unit's few rows)."""
    values = np.ascontiguousarray(values, dtype=dataset.dtype)
    tail = dataset.shape[1:]
    selection = dataset.id.get_space()
    selection.select_none()
    for row in rows:
        selection.select_hyperslab((int(row),) + (0,) * len(tail), (1,) + tail, op=h5py.h5s.SELECT_OR)
    dataset.id.write(h5py.h5s.create_simple(values.shape), selection, values)


def _create_early(group, name, shape, dtype, fill=0):
    """A contiguous dataset whose storage is allocated now (so later writes change only raw data)."""
    space = h5py.h5s.create_simple(tuple(int(s) for s in shape))
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    plist.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    tid = h5py.h5t.py_create(np.dtype(dtype), logical=True)
    array = np.array(fill, dtype=dtype)
    plist.set_fill_value(array)
    h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=plist)
    return group[name]


def fingerprint_changes(stored: dict, current: dict) -> list[str]:
    """What differs between two search fingerprints, one phrase per dotted key."""
    def flat(d, prefix=""):
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(stored), flat(current)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        if key.startswith("input_sha256."):
            changes.append(f"the contents of {key.removeprefix('input_sha256.')} changed")
        else:
            changes.append(f"{key} was {json.dumps(old.get(key))}, is {json.dumps(new.get(key))}")
    return changes


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
STACKS = "stacks"  # the key of the fingerprint that identifies the particle stacks (`io.mrc.stack_identity`)


def _open_checkpoint(path, mode: str) -> h5py.File:
    """A lorefine checkpoint opened (lorefine's own lock guards it, not HDF5's file locking); InputError for
    a file that is not one (empty, not HDF5, or an HDF5 file lorefine did not write)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(len(HDF5_SIGNATURE))
    if head != HDF5_SIGNATURE:
        what = "empty" if not head else "not an HDF5 file"
        raise InputError(f"{path}: the file is {what}, not a lorefine checkpoint (move it away, or use a new output folder)")
    try:
        f = h5py.File(path, mode, locking=False)
    except OSError as error:
        raise InputError(f"{path}: cannot open the checkpoint ({str(error).splitlines()[0]})") from None
    if "search_fingerprint" not in f.attrs or "lorefine_version" not in f.attrs:
        f.close()
        raise InputError(f"{path}: an HDF5 file that lorefine did not write (move it away, or use a new output folder)")
    return f


def stack_changes(stored: dict | None, current: dict | None) -> tuple[list[str], list[str]]:
    """(changes that refuse a resume, warnings) between the particle stacks a checkpoint recorded (`io.mrc.stack_identity`)
    and the stacks now. Changed sizes, a stack more or less, or other bytes in a sampled image are changes; new
    modification times with the same sizes and sampled images (a copy) are a warning; a checkpoint of an earlier
    lorefine that recorded nothing is a warning too."""
    if current is None:
        return [], []
    if stored is None:
        return [], ["the checkpoint does not record its particle stacks (an earlier lorefine wrote it): a stack changed since "
                    "cannot be noticed"]
    changes = []
    if stored["count"] != current["count"]:
        changes.append(f"the STAR file names {current['count']} particle stacks, the checkpoint's {stored['count']}")
    elif stored["sizes"] != current["sizes"]:
        changes.append(f"the particle stacks hold {current['bytes']:,} bytes, {stored['bytes']:,} when the checkpoint was made "
                       "(a stack replaced, cut or extended)" if stored["bytes"] != current["bytes"]
                       else "a particle stack's size changed since the checkpoint was made (a stack replaced)")
    differing = [name for name, digest in stored["sample"].items() if current["sample"].get(name) != digest]
    if differing:
        changes.append(f"image {differing[0]} holds other data than when the checkpoint was made"
                       + (f" (and {len(differing) - 1} more of {len(stored['sample'])} sampled)" if len(differing) > 1 else "")
                       + " (a stack replaced or rewritten)")
    if not changes and stored["mtimes"] != current["mtimes"]:
        return [], [f"the particle stacks were modified (or copied) since the checkpoint was made; their sizes and "
                    f"{len(stored['sample'])} sampled images are the same, so the run resumes"]
    return changes, []


def check_resumable(path, fingerprint: dict, stacks: dict | None = None) -> list[str]:
    """InputError unless ``path`` is a checkpoint this lorefine continues with these settings and inputs (and, when
    given, these particle stacks: `stack_changes`); returns the warnings."""
    with _open_checkpoint(path, "r") as f:
        stored_format = int(f.attrs.get("checkpoint_format", 1))
        if stored_format != CHECKPOINT_FORMAT:
            raise InputError(
                f"{path}: the checkpoint was written by lorefine {f.attrs['lorefine_version']} in checkpoint format "
                f"{stored_format}; this lorefine reads format {CHECKPOINT_FORMAT} (finish the run with the "
                "version that started it, or use a new output folder)"
            )
        stored, current = json.loads(f.attrs["search_fingerprint"]), json.loads(json.dumps(fingerprint, sort_keys=True))
        for value in (stored, current):  # a checkpoint from before compute.backend existed ran on the CPU back-end
            value.setdefault("compute", {"backend": "cpu"})
        changed = fingerprint_changes({k: v for k, v in stored.items() if k != STACKS}, {k: v for k, v in current.items() if k != STACKS})
        stack_changed, warnings = stack_changes(stored.get(STACKS), stacks)
        changed += stack_changed
        if changed:
            raise InputError(
                f"{path}: --continue needs the checkpoint's settings and inputs, but {'; '.join(changed)} "
                "(restore them, or use a new output folder)"
            )
    return warnings


def stages_done(path) -> int:
    """How many stages of a checkpoint are searched and reconstructed (0 if it cannot be read)."""
    try:
        with _open_checkpoint(path, "r") as f:
            found = []
            f.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Group) and item.attrs.get("reconstructed", 0) else None)
            return len(found)
    except (InputError, OSError):
        return 0


class ResultsFile:
    """Open (or create) ``results.h5`` in an output folder. Only rank 0 makes one."""

    def __init__(self, path, *, image_names, config_yaml: str, fingerprint: dict, command_line: str,
                 version: str, resume: bool, stacks: dict | None = None, ranks: int | None = None):
        self.path = Path(path)
        self._open_stage, self._datasets = None, {}  # `_unit_datasets`
        if self.path.exists():
            if not resume:
                raise InputError(f"{self.path}: a results file exists already; use --continue to resume it or a new output folder")
            check_resumable(self.path, fingerprint, stacks)
            self.file = _open_checkpoint(self.path, "r+")
            self.identity = identity(self.path)
            self._add_attempt(ranks, command_line)
            return
        fingerprint_json = json.dumps(fingerprint | ({STACKS: stacks} if stacks is not None else {}), sort_keys=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["lorefine_version"] = version
            f.attrs["checkpoint_format"] = CHECKPOINT_FORMAT
            f.attrs["command_line"] = command_line
            f.attrs["config_yaml"] = config_yaml
            f.attrs["search_fingerprint"] = fingerprint_json
            f.create_dataset("particles/image_name", data=np.array(list(image_names), dtype=h5py.string_dtype()))
        tmp.replace(self.path)
        self.file = h5py.File(self.path, "r+", locking=False)
        self.identity = identity(self.path)
        self._add_attempt(ranks, command_line)

    def check_present(self) -> None:
        """InputError when the file this object writes is no longer at its path (deleted, moved or replaced while the
        run was writing it: its writes would be lost)."""
        now = identity(self.path)
        if now != self.identity:
            what = "deleted or moved away" if now is None else "replaced by another file"
            raise InputError(f"{self.path}: the checkpoint was {what} while this run was writing it; this run stops "
                             "(what it wrote since is not in any results.h5 at that path)")

    def _add_attempt(self, ranks, command_line: str) -> None:
        """One more entry in the root attribute ``attempts`` (this start of the run)."""
        if ranks is None:
            return
        import datetime

        attempts = json.loads(self.file.attrs.get("attempts", "[]"))
        attempts.append({"started": datetime.datetime.now().isoformat(timespec="seconds"), "ranks": int(ranks), "command_line": command_line})
        self.file.attrs["attempts"] = json.dumps(attempts)
        self.file.flush()

    def stage(self, name: str, *, iteration: int, module: str, unit_of_particle, max_poses: int = 1) -> h5py.Group:
        """The group of a stage, created at full size on first use (``max_poses`` poses of each particle's posterior)."""
        if name in self.file:
            return self.file[name]
        unit_of_particle = np.asarray(unit_of_particle, dtype=np.int32)
        n = len(unit_of_particle)
        n_units = int(unit_of_particle.max()) + 1 if n else 0
        g = self.file.create_group(name)
        g.attrs.update({"iteration": iteration, "module": module, "n_units": n_units, "complete": 0, "reconstructed": 0})
        _create_early(g, "unit_of_particle", (n,), np.int32)
        g["unit_of_particle"][...] = unit_of_particle
        _create_early(g, "unit_done", (n_units,), np.int8)
        for field, (shape, dtype) in (search_fields(max_poses) | pose_fields(max_poses)).items():
            _create_early(g, field, (n,) + shape, dtype)
        self.file.flush()
        return g

    def write_unit(self, name: str, unit: int, particles, results: dict) -> None:
        """Data first, then the unit's flag, then flush."""
        datasets = self._unit_datasets(name)
        order = np.argsort(particles)
        rows = np.asarray(particles)[order]
        for field in UNIT_FIELDS:
            _write_rows(datasets[field], rows, np.asarray(results[field])[order])
        _write_rows(datasets["status"], rows, np.ones(len(rows), dtype=np.int8))
        self.file.flush()
        datasets["unit_done"][unit] = 1
        self.file.flush()

    def _unit_datasets(self, name: str) -> dict:
        """The datasets `write_unit` writes, opened once per stage (a group lookup costs more than the write)."""
        if self._open_stage != name:
            g = self.file[name]
            self._datasets = {field: g[field] for field in (*FIELDS, "unit_done")}
            self._open_stage = name
        return self._datasets

    def done_units(self, name: str) -> np.ndarray:
        return np.asarray(self.file[name]["unit_done"][...], dtype=bool) if name in self.file else np.zeros(0, bool)

    def read_stage(self, name: str) -> dict:
        """The search's results of a stage (`FIELDS`)."""
        g = self.file[name]
        return {field: g[field][...] for field in FIELDS}

    def write_poses(self, name: str, poses: dict, rotation_vector_deg, shift_px) -> None:
        """The stage's final poses (`pose_fields`: the search's with the mean motion taken out) and that motion."""
        g = self.file[name]
        for field in POSE_FIELDS:
            g[field][...] = poses[field]
        g.attrs["mean_rotation_removed_deg"] = np.asarray(rotation_vector_deg, dtype=np.float64)
        g.attrs["mean_shift_removed_px"] = np.asarray(shift_px, dtype=np.float64)
        self.file.flush()

    def set_root_flag(self, attr: str) -> None:
        self.file.attrs[attr] = 1
        self.file.flush()

    def root_flag(self, attr: str) -> bool:
        return bool(self.file.attrs.get(attr, 0))

    def set_final_iteration(self, iteration: int, because: str) -> None:
        """Record the run's last iteration (``iterations: auto``) and why it stopped there."""
        self.file.attrs["final_iteration"] = int(iteration)
        self.file.attrs["iterations_stopped_because"] = because
        self.file.flush()

    def final_iteration(self) -> int | None:
        value = self.file.attrs.get("final_iteration")
        return None if value is None else int(value)

    def stage_attribute(self, name: str, attr: str):
        """A stage's attribute, or None when the stage or the attribute is not there."""
        if name not in self.file:
            return None
        return self.file[name].attrs.get(attr)

    def set_attribute(self, name: str, attr: str, value) -> None:
        self.file[name].attrs[attr] = value
        self.file.flush()

    def mark(self, name: str, attr: str) -> None:
        self.file[name].attrs[attr] = 1
        self.file.flush()

    def close(self) -> None:
        if self.file:
            self._open_stage, self._datasets = None, {}
            self.file.close()
            self.file = None


def run_record(path) -> dict:
    """The root record of a finished or running ``results.h5``: {'lorefine_version', 'command_line', 'attempts' (list of
    {'started', 'ranks', 'command_line'}; empty for a file written before they were recorded)} ({} when it cannot be
    read)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            record = {key: str(f.attrs.get(key, "?")) for key in ("lorefine_version", "command_line")}
            record["attempts"] = json.loads(f.attrs.get("attempts", "[]"))
            return record
    except (OSError, ValueError):
        return {}


def stage_prior_sigma(path, stage: str):
    """The prior widths a stage's search used, (σ_rot rad, σ_px), each None where the prior was flat; None when the
    stage or its attribute is not in the file."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if stage not in f or "prior_sigma" not in f[stage].attrs:
                return None
            rot, px = (float(v) for v in f[stage].attrs["prior_sigma"])
    except OSError:
        return None
    return (None if np.isnan(rot) else rot), (None if np.isnan(px) else px)


def stage_cpu_seconds(path) -> dict:
    """{stage: {part: CPU seconds summed over ranks}} from the ``cpu_seconds`` attribute of every stage ({} when the
    file cannot be read)."""
    found = {}
    try:
        with h5py.File(path, "r", locking=False) as f:
            for iteration in sorted(k for k in f if k.startswith("iteration_")):
                for module, group in f[iteration].items():
                    if isinstance(group, h5py.Group) and "cpu_seconds" in group.attrs:
                        found[f"{iteration}/{module}"] = json.loads(group.attrs["cpu_seconds"])
    except (OSError, ValueError):
        return {}
    return found


def final_iteration(path) -> int | None:
    """The last iteration of a run with ``iterations: auto`` once its poses settled (root attribute ``final_iteration``),
    else None (not yet, or no readable file)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.attrs.get("final_iteration")
            return None if value is None else int(value)
    except OSError:
        return None


def iterations_stopped_because(path) -> str | None:
    """Why a run with ``iterations: auto`` stopped iterating (root attribute ``iterations_stopped_because``), else None."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.attrs.get("iterations_stopped_because")
            return None if value is None else str(value)
    except OSError:
        return None


def has_root_flag(path, attr: str) -> bool:
    """Whether the root flag ``attr`` of ``results.h5`` is set (False when the file cannot be read)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return bool(f.attrs.get(attr, 0))
    except OSError:
        return False


def read_final_stage(path, stage: str) -> dict:
    """A reconstructed stage's final poses and fitted rest scale: {'matrix', 'origin_px', 'rest_scale'}; InputError
    when the file is missing or the stage is not finished."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path.parent}: no {path.name}; expected the output folder of a lorefine refine run")
    with h5py.File(path, "r", locking=False) as f:
        if stage not in f or not f[stage].attrs.get("reconstructed", 0):
            raise InputError(f"{path}: {stage} is not finished; finish the run with lorefine refine --continue")
        return {k: f[stage][k][...] for k in ("matrix", "origin_px", "rest_scale")}


def write_motion(path, analysis) -> None:
    """Add (or replace) the /motion group of a closed ``results.h5`` from a `validation.motion.MotionAnalysis`:
    written into a copy beside it, which then replaces the file (the checkpoint is never half-written; the
    copy has the permissions of the user's umask, `io.files.replacing`)."""
    import shutil

    from lorefine_mpi.io.files import replacing

    path = Path(path)
    with replacing(path, suffix=".tmp") as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+", locking=False) as f:
            if "motion" in f:
                del f["motion"]
            g = f.create_group("motion")
            g.attrs["module_names"] = json.dumps(list(analysis.module_names))
            g.attrs["pairs"] = json.dumps([list(p) for p in analysis.pairs])
            g.attrs["feature_names"] = json.dumps(analysis.feature_names())
            g.attrs["centres_px"] = np.asarray(analysis.centres_px, dtype=np.float64)
            for name, values in (("rotation_deg", analysis.rotation_deg), ("shift_angstrom", analysis.shift_angstrom),
                                 ("relative_rotation_deg", analysis.relative_rotation_deg),
                                 ("relative_shift_angstrom", analysis.relative_shift_angstrom),
                                 ("pca_mean", analysis.mean), ("pca_eigenvalues", analysis.eigenvalues),
                                 ("pca_variance_explained", analysis.variance_explained),
                                 ("pca_components", analysis.components), ("pca_scores", analysis.scores)):
                g.create_dataset(name, data=np.asarray(values, dtype=np.float64))
