"""Reconstruct a map from a particle table: batched reads from memory-mapped stacks into half-map accumulators."""

from __future__ import annotations

import logging

import numpy as np

from lorefine_mpi.process_memory import release_freed_memory
from lorefine_mpi.reconstruction.backproject import BackProjector

log = logging.getLogger(__name__)


def half_subsets(table, seed: int = 0) -> np.ndarray:
    """rlnRandomSubset (1/2) of each particle; a seeded random split where the file has none."""
    subset = table.random_subset.copy()
    missing = subset == 0
    if missing.any():
        subset[missing] = np.random.default_rng(seed).integers(1, 3, missing.sum())
    return subset


def backproject_halves(source, indices, *, padding: int = 2, subset=None, matrices=None, origin_px=None, weights=None, batch: int = 256,
                       progress=None, into=None):
    """Two BackProjectors (half 1, half 2) holding the particles ``indices`` of a `projection.source.ParticleSource`
    (poses from its table unless given), added to the pair ``into`` when given. With ``weights`` (n, K), each particle
    is inserted at K poses, matrices (n, K, 3, 3) and origin_px (n, K, 2), each with its weight (0: skipped)."""
    subset = half_subsets(source.table) if subset is None else subset
    return _backproject(source, indices, subset - 1, 2, padding, matrices, origin_px, batch, progress, into, weights)


def backproject_all(source, indices, *, padding: int = 2, matrices=None, origin_px=None, batch: int = 256, progress=None) -> BackProjector:
    """One BackProjector holding the particles ``indices`` of a source (poses from its table unless given)."""
    group = np.zeros(len(source), dtype=np.int64)
    return _backproject(source, indices, group, 1, padding, matrices, origin_px, batch, progress, None)[0]


def backproject_into(accumulator: BackProjector, source, indices, *, matrices=None, origin_px=None, weights=None, batch: int = 256) -> None:
    """Add the particles ``indices`` of a source to ``accumulator`` (poses from its table unless given; with ``weights``
    (n, K), each at K poses: matrices (n, K, 3, 3), origin_px (n, K, 2))."""
    group = np.zeros(len(source), dtype=np.int64)
    _backproject(source, indices, group, 1, accumulator.padding, matrices, origin_px, batch, None, [accumulator], weights)


def _backproject(source, indices, group, n_groups, padding, matrices, origin_px, batch, progress, into, weights=None):
    """``n_groups`` BackProjectors (``into``, or new ones); particle i goes into accumulator ``group[i]`` (at K weighted
    poses each with ``weights`` (n, K))."""
    table = source.table
    matrices = table.matrices if matrices is None else matrices
    origin_px = table.origin_px if origin_px is None else origin_px
    accumulators = list(into) if into is not None else [BackProjector(source.box, padding) for _ in range(n_groups)]
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch):
        ids = indices[start : start + batch]
        images_ft = source.spectra(ids)
        ctf = source.ctf(ids)
        for g, bp in enumerate(accumulators):
            rows = np.nonzero(group[ids] == g)[0]
            if weights is None:
                if len(rows):
                    bp.insert(images_ft[rows], matrices[ids[rows]], None if ctf is None else ctf[rows], origin_px[ids[rows]])
                continue
            for k in range(weights.shape[1]):  # the image's spectrum and CTF once, its K poses in turn
                used = rows[weights[ids[rows], k] > 0]
                if len(used):
                    bp.insert(images_ft[used], matrices[ids[used], k], None if ctf is None else ctf[used], origin_px[ids[used], k],
                              weights=weights[ids[used], k])
        if progress:
            progress(min(start + batch, len(indices)), len(indices))
    return accumulators


def maps_from_halves(halves, weight_floor: float = 1e-3, gridding_iterations: int = 10) -> dict:
    """{'half1', 'half2', 'full'} maps (N, N, N) float32 from two accumulators (`with_full`)."""
    return with_full(*(bp.reconstruct(weight_floor, gridding_iterations) for bp in halves))


def with_full(half1, half2) -> dict:
    """{'half1', 'half2', 'full'}: the full map is the mean of the halves, each reconstructed once (a third
    reconstruction from the summed accumulators differs from it only where the two halves sample Fourier space
    unequally, and would cost as much again)."""
    return {"half1": half1, "half2": half2, "full": 0.5 * (half1 + half2)}


def distributed_half_maps(ctx, new_accumulator, backproject, weight_floor: float = 1e-3, gridding_iterations: int = 10,
                          stoppable: bool = True):
    """The two half maps of particles that the processes share, with one accumulator per process (collective; ctx the
    run's `refine.distributor.Distributor`): for each half map of ``ctx.my_halves()`` in turn (both for one process; one
    per rank of many, half 1 on the even ranks and half 2 on the odd), ``backproject(half, accumulator)`` adds this
    process's particles of that half to a new accumulator (``new_accumulator()``, released once used); the half's ranks sum theirs onto its owner (rank 0 for
    half 1, rank 1 for half 2: `ctx.reduce_half`), which reconstructs it in the accumulator's own memory (``consume``),
    so that with two ranks or more the halves are reconstructed at once (as relion_refine_mpi does). (half1, half2) on
    rank 0, None on the others, False on every rank when a stop was asked (``stoppable``: a refinement's stages; the end
    of a run finishes what it began). The same maps on any number of ranks when the
    accumulators' sums are exact (`refine.engine.ExactSum`)."""
    mine = {}
    for half in ctx.my_halves():
        accumulator = new_accumulator()
        backproject(half, accumulator)
        if stoppable and ctx.any_stop_requested():  # a stop asked on any rank: every rank stops here
            return False
        ctx.reduce_half(accumulator.data, half)
        ctx.reduce_half(accumulator.weight, half)
        if ctx.rank == ctx.half_owner(half):
            release_freed_memory()  # the insertion's work arrays, free: the gridding's grids are laid out in pages of their own
            mine[half] = accumulator.reconstruct(weight_floor, gridding_iterations, consume=True)
        del accumulator
        release_freed_memory()
    maps = tuple(ctx.move_to_root(mine.get(h), source=ctx.half_owner(h)) for h in (1, 2))
    return maps if ctx.is_root else None
