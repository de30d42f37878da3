"""MRC maps and particle stacks.

Maps are read whole into ``(N, N, N)`` float32 arrays indexed ``[z, y, x]`` with their voxel size in Å.
Particle stacks are opened memory-mapped, so an image is read by index without loading the stack; a
small cache keeps the stacks of a many-stack STAR file open.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import mrcfile
import numpy as np

from lorefine_mpi.errors import InputError


def read_map(path) -> tuple[np.ndarray, float]:
    """An MRC map: ``(array float32 [z, y, x], voxel size Å)``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise ValueError("no data")
            data = np.asarray(mrc.data, dtype=np.float32).copy()
            voxel = float(mrc.voxel_size.x)
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot read it as an MRC map ({error})") from None
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D map, got an array of shape {data.shape}")
    return data, voxel


def write_map(path, volume, voxel_size_angstrom: float) -> None:
    """Write an MRC2014 map (float32) to a temporary name beside ``path``, then rename it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mrc", dir=path.parent)
    os.close(fd)
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
            mrc.voxel_size = voxel_size_angstrom
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    """(number of images, ny, nx) of an MRC stack, from its header only."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: particle stack not found")
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            shape = mrc.data.shape
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot read it as an MRC stack ({error})") from None
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
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except (ValueError, OSError) as error:
            raise InputError(f"{path}: cannot read it as an MRC stack ({error})") from None
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
            out[rows] = data[indices[rows]]
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def read_images(table, indices, reader: StackReader | None = None) -> np.ndarray:
    """Images (k, N, N) float32 of the particles ``indices`` of a ParticleTable."""
    own = reader is None
    reader = reader or StackReader()
    try:
        idx = np.asarray(indices)
        return reader.read(table.stack_path[idx], table.image_index[idx])
    finally:
        if own:
            reader.close()
