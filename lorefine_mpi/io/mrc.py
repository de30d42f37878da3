"""MRC maps and particle stacks.

Maps are read whole into ``(N, N, N)`` float32 arrays indexed ``[z, y, x]`` with their voxel size in Å.
Particle stacks are opened memory-mapped, so an image is read by index without loading the stack; a
small cache keeps the stacks of a many-stack STAR file open.

Only regular files are opened (a FIFO would block), and only what lorefine can use is read: real-valued modes
(complex modes 3 and 4 are refused, not cast), a header that gives some data, a positive voxel size for maps.
A file that cannot be read is one `InputError` naming it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import mrcfile
import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.io.files import regular_input, replacing, same_file

COMPLEX_MODES = {3: "complex int16", 4: "complex float32"}


def _open(path, what: str, memory_mapped: bool = False):
    """An MRC file opened read-only (permissive, so older writers' headers are read), with its data, and
    mrcfile's warnings kept off stderr: a file whose data cannot be read (a truncated stack, a damaged header,
    a complex mode) is an InputError that names the file and says why."""
    regular_input(path, f"MRC {what}")
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        try:
            mrc = (mrcfile.mmap if memory_mapped else mrcfile.open)(path, mode="r", permissive=True)
        except (ValueError, OSError, EOFError, OverflowError, MemoryError) as error:
            raise InputError(f"{path}: cannot read it as an MRC {what} ({' '.join(str(error).split())[:200]})") from None
    if mrc.data is None:
        mrc.close()
        reasons = [str(w.message) for w in caught if "data block" in str(w.message)] or [str(w.message) for w in caught]
        why = f"{reasons[0]}: the file is truncated or not an MRC file" if reasons else "it holds no data"
        raise InputError(f"{path}: cannot read it as an MRC {what} ({why})")
    mode = int(mrc.header.mode)
    problem = None
    if mode in COMPLEX_MODES:
        problem = f"its data are {COMPLEX_MODES[mode]} (MRC mode {mode}); expected real values (mode 0, 1, 2, 6 or 12)"
    elif mrc.data.size == 0:
        problem = f"its header gives {' × '.join(str(int(v)) for v in (mrc.header.nx, mrc.header.ny, mrc.header.nz))} voxels: no data (a damaged header?)"
    if problem:
        mrc.close()
        raise InputError(f"{path}: {problem}")
    return mrc


def _voxel_size(mrc) -> float:
    """The voxel size (Å, x) of an open MRC file; NaN when its header cannot give one (a zero cell or sampling)."""
    with np.errstate(all="ignore"):
        return float(mrc.voxel_size.x)


@contextlib.contextmanager
def _opened(path, what: str, memory_mapped: bool = False):
    mrc = _open(path, what, memory_mapped)
    try:
        yield mrc
    finally:
        mrc.close()


def _not_finite(data) -> str | None:
    """None when every value is finite, else 'N NaN/Inf values' for a message."""
    bad = np.count_nonzero(~np.isfinite(data))
    return f"{bad} NaN or Inf value{'s' if bad != 1 else ''}" if bad else None


def read_map(path) -> tuple[np.ndarray, float]:
    """An MRC map: ``(array float32 [z, y, x], voxel size Å)``, cubic, with a positive voxel size; NaN/Inf values and
    image stacks (.mrcs) are refused."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    with _opened(path, "map") as mrc:
        data = np.asarray(mrc.data, dtype=np.float32).copy()
        voxel = _voxel_size(mrc)
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D map, got an array of shape {data.shape}")
    if path.suffix.lower() == ".mrcs":
        raise InputError(f"{path}: a stack of {data.shape[0]} images of {data.shape[2]} × {data.shape[1]} px (.mrcs); expected a 3D map (.mrc)")
    if len(set(data.shape)) != 1:
        raise InputError(f"{path}: expected a cubic 3D map, got an array of {data.shape[2]} × {data.shape[1]} × {data.shape[0]} voxels")
    if not (np.isfinite(voxel) and voxel > 0):
        raise InputError(f"{path}: its header gives a voxel size of {voxel:g} Å; expected a positive number (a damaged header?)")
    problem = _not_finite(data)
    if problem:
        raise InputError(f"{path}: the map holds {problem}; expected finite numbers")
    return data, voxel


MASK_TOLERANCE = 1e-3
MIN_MASK_MAXIMUM = 0.5  # a soft mask is 1 inside what it keeps; a maximum below this is a mask scaled by mistake


def read_mask(path, shape, whose: str = "the map's") -> tuple[np.ndarray, float]:
    """A soft mask (values in [0, 1], 1 inside what it keeps) of ``shape``, clipped to [0, 1], and its voxel size (Å): an
    empty mask, one outside [0, 1] or one whose maximum is below `MIN_MASK_MAXIMUM` (scaled by mistake) is refused."""
    mask, voxel = read_map(path)
    if mask.shape != tuple(shape):
        raise InputError(f"{path}: mask box {mask.shape[0]} differs from {whose} box {shape[0]}; expected the same")
    low, high = float(mask.min()), float(mask.max())
    if low < -MASK_TOLERANCE or high > 1 + MASK_TOLERANCE:
        raise InputError(f"{path}: mask values must lie in [0, 1] (1 = keep), got [{low:.3g}, {high:.3g}]")
    if high <= 0:
        raise InputError(f"{path}: the mask is empty (all zero)")
    if high < MIN_MASK_MAXIMUM:
        raise InputError(f"{path}: the mask's largest value is {high:.3g}; a soft mask is 1 inside what it keeps: expected a maximum of 1 "
                         f"(at least {MIN_MASK_MAXIMUM:g}; rescale it)")
    return np.clip(mask, 0, 1), voxel


def require_distinct(path_a, a, path_b, b, what: str) -> None:
    """InputError when two maps that must be independent (two half maps, the two maps of an FSC) are one file or hold
    the same values."""
    if same_file(path_a, path_b):
        raise InputError(f"{path_b}: the same file as {path_a}; expected {what} to be two different maps")
    if a.shape == b.shape and np.array_equal(a, b):
        raise InputError(f"{path_b}: holds the same values as {path_a}; expected {what} to be two different maps "
                         "(independent halves: their FSC would be 1 everywhere)")


def write_map(path, volume, voxel_size_angstrom: float) -> None:
    """Write an MRC2014 map (float32) to a temporary name beside ``path``, then rename it."""
    with replacing(path, suffix=".mrc") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = voxel_size_angstrom


def voxel_size_angstrom(path) -> float:
    """The voxel size (Å) of an MRC file, from its header only."""
    path = regular_input(path, "MRC file")
    try:
        with warnings.catch_warnings(), mrcfile.open(path, header_only=True, permissive=True) as mrc:
            warnings.simplefilter("ignore")
            voxel = _voxel_size(mrc)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read it as an MRC file ({error})") from None
    if not (np.isfinite(voxel) and voxel > 0):
        raise InputError(f"{path}: its header gives a voxel size of {voxel:g} Å; expected a positive number (a damaged header?)")
    return voxel


def stack_shape(path) -> tuple[int, int, int]:
    """(number of images, ny, nx) of an MRC stack, from its header (a truncated file is refused)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: particle stack not found")
    with _opened(path, "stack", memory_mapped=True) as mrc:
        shape = mrc.data.shape
    if len(shape) == 2:
        return (1,) + tuple(shape)
    return tuple(shape)


class StackReader:
    """Reads particle images by (stack path, 0-based index) from memory-mapped MRC stacks."""

    def __init__(self, max_open: int = 64):
        self._open: OrderedDict[str, mrcfile.mrcmemmap.MrcMemmap] = OrderedDict()
        self.max_open = max_open

    def _stack(self, path: str):
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        if not os.path.exists(path):
            raise InputError(f"{path}: particle stack not found")
        mrc = _open(path, "stack", memory_mapped=True)
        self._open[path] = mrc
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return mrc

    def read(self, stack_paths, indices) -> np.ndarray:
        """Images (k, N, N) float32 for parallel arrays of stack paths and 0-based indices."""
        stack_paths = np.asarray(stack_paths, dtype=object)
        indices = np.asarray(indices, dtype=np.int64)
        first = self._stack(str(stack_paths[0])).data
        box = first.shape[-1]
        out = np.empty((len(indices), first.shape[-2], box), dtype=np.float32)
        for path in dict.fromkeys(stack_paths.tolist()):
            rows = np.nonzero(stack_paths == path)[0]
            data = self._stack(str(path)).data
            data = data[None] if data.ndim == 2 else data
            if indices[rows].max() >= len(data):
                raise InputError(f"{path}: image {indices[rows].max() + 1} is beyond the stack, which holds {len(data)} images")
            out[rows] = data[indices[rows]]
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


STACK_SAMPLE = 32  # images whose bytes identify a run's particle stacks (`stack_identity`)


def stack_identity(table, sample_size: int = STACK_SAMPLE) -> dict:
    """What identifies the particle stacks of a table, for a checkpoint to notice that they changed (`io.results`): their
    number, total size and a digest of every stack's path and size, a digest of their modification times, and a digest
    of each of ``sample_size`` images spread over the table (the image's bytes as stored: a header whose statistics or
    labels were rewritten, which lorefine does not read, changes nothing)."""
    import hashlib

    stacks = list(dict.fromkeys(table.stack_path.tolist()))
    stats = {path: os.stat(path) for path in stacks}
    sizes = hashlib.sha256("\n".join(f"{p}\t{stats[p].st_size}" for p in stacks).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    times = hashlib.sha256("\n".join(f"{p}\t{stats[p].st_mtime_ns}" for p in stacks).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    rows = np.unique(np.linspace(0, len(table) - 1, min(sample_size, len(table))).round().astype(np.int64))
    sample = {}
    for row in rows:
        path, index = table.stack_path[row], int(table.image_index[row])
        with _opened(path, "stack", memory_mapped=True) as mrc:
            data = mrc.data[None] if mrc.data.ndim == 2 else mrc.data
            image = np.ascontiguousarray(data[index]).tobytes() if index < len(data) else b""
        sample[str(table.image_name[row])] = hashlib.sha256(image).hexdigest()[:16]
    return {"count": len(stacks), "bytes": int(sum(st.st_size for st in stats.values())), "sizes": sizes, "mtimes": times,
            "sample": sample}


def read_images(table, indices, reader: StackReader | None = None) -> np.ndarray:
    """Images (k, N, N) float32 of the particles ``indices`` of a ParticleTable. An image holding NaN or
    Inf values is refused (InputError naming it): every read of the search and the reconstruction checks."""
    own = reader is None
    reader = reader or StackReader()
    try:
        idx = np.asarray(indices)
        images = reader.read(table.stack_path[idx], table.image_index[idx])
    finally:
        if own:
            reader.close()
    finite = np.isfinite(images).all(axis=(1, 2))
    if not finite.all():
        i = idx[np.argmin(finite)]
        raise InputError(f"{table.stack_path[i]}: image {table.image_index[i] + 1} ({table.image_name[i]}) holds NaN or Inf values; "
                         "expected finite numbers")
    return images
