"""MRC maps and particle stacks.

Maps are read whole into ``(N, N, N)`` float32 arrays indexed ``[z, y, x]`` with their voxel size in Å.
Particle stacks are opened memory-mapped, so an image is read by index without loading the stack; a
small cache keeps the stacks of a many-stack STAR file open.
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
from lorefine_mpi.io.files import replacing


def _open(path, what: str, memory_mapped: bool = False):
    """An MRC file opened read-only (permissive, so older writers' headers are read), with its data, and
    mrcfile's warnings kept off stderr: a file whose data cannot be read (a truncated stack) is an
    InputError that names the file and says why."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = (mrcfile.mmap if memory_mapped else mrcfile.open)(path, mode="r", permissive=True)
        except (ValueError, OSError, EOFError) as error:
            raise InputError(f"{path}: cannot read it as an MRC {what} ({error})") from None
    if mrc.data is None:
        mrc.close()
        reasons = [str(w.message) for w in caught if "data block" in str(w.message)] or [str(w.message) for w in caught]
        why = f"{reasons[0]}: the file is truncated or not an MRC file" if reasons else "it holds no data"
        raise InputError(f"{path}: cannot read it as an MRC {what} ({why})")
    return mrc


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
    """An MRC map: ``(array float32 [z, y, x], voxel size Å)``; NaN/Inf values are refused."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    with _opened(path, "map") as mrc:
        data = np.asarray(mrc.data, dtype=np.float32).copy()
        voxel = float(mrc.voxel_size.x)
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D map, got an array of shape {data.shape}")
    problem = _not_finite(data)
    if problem:
        raise InputError(f"{path}: the map holds {problem}; expected finite numbers")
    return data, voxel


def write_map(path, volume, voxel_size_angstrom: float) -> None:
    """Write an MRC2014 map (float32) to a temporary name beside ``path``, then rename it."""
    with replacing(path, suffix=".mrc") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = voxel_size_angstrom


def voxel_size_angstrom(path) -> float:
    """The voxel size (Å) of an MRC file, from its header only."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            return float(mrc.voxel_size.x)
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot read it as an MRC file ({error})") from None


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
