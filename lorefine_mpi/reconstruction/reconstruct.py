"""Reconstruct a map from a particle table: batched reads from memory-mapped stacks into half-map accumulators."""

from __future__ import annotations

import logging

import numpy as np

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io import mrc
from lorefine_mpi.projection import ctf as ctf_model
from lorefine_mpi.projection import fourier
from lorefine_mpi.reconstruction.backproject import BackProjector

log = logging.getLogger(__name__)


def half_subsets(table, seed: int = 0) -> np.ndarray:
    """rlnRandomSubset (1/2) of each particle; a seeded random split where the file has none."""
    subset = table.random_subset.copy()
    missing = subset == 0
    if missing.any():
        subset[missing] = np.random.default_rng(seed).integers(1, 3, missing.sum())
    return subset


def backproject_halves(table, indices, box, *, use_ctf: bool, padding: int = 2, subset=None, matrices=None,
                       origin_px=None, reader=None, batch: int = 256, progress=None):
    """Two BackProjectors (half 1, half 2) holding the particles ``indices`` (poses from the table unless given)."""
    subset = half_subsets(table) if subset is None else subset
    matrices = rotations.euler_to_matrix(table.rot_rad, table.tilt_rad, table.psi_rad) if matrices is None else matrices
    origin_px = table.origin_px if origin_px is None else origin_px
    halves = [BackProjector(box, padding) for _ in (1, 2)]
    own = reader is None
    reader = reader or mrc.StackReader()
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch):
        ids = indices[start : start + batch]
        images_ft = fourier.to_fourier(mrc.read_images(table, ids, reader))
        ctf = ctf_model.ctf_for_table(table, ids, box) if use_ctf else None
        for h, bp in enumerate(halves, 1):
            rows = np.nonzero(subset[ids] == h)[0]
            if len(rows):
                bp.insert(images_ft[rows], matrices[ids[rows]], None if ctf is None else ctf[rows], origin_px[ids[rows]])
        if progress:
            progress(min(start + batch, len(indices)), len(indices))
    if own:
        reader.close()
    return halves


def maps_from_halves(halves, weight_floor: float = 1e-3, gridding_iterations: int = 10) -> dict:
    """{'half1', 'half2', 'full'} maps (N, N, N) float32 from two accumulators (the first is summed into)."""
    out = {f"half{h}": bp.reconstruct(weight_floor, gridding_iterations) for h, bp in enumerate(halves, 1)}
    halves[0].add(halves[1])
    out["full"] = halves[0].reconstruct(weight_floor, gridding_iterations)
    return out
