"""Projection classes and work units (pure; no MPI).

A particle's projection class is the nearest direction of a coarse even grid (`direction_grid` at
the class spacing) to its projection direction (third row of its pose). Each class is cut into work
units of at most K particles, in ascending particle order; units are numbered by class, then chunk.
The partition depends only on the poses and the two settings, never on the number of ranks.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.geometry import candidates


def projection_classes(matrices, class_spacing_rad: float) -> np.ndarray:
    """(n,) class index of each pose (n, 3, 3)."""
    grid = candidates.direction_grid(class_spacing_rad)
    return candidates.nearest_direction(grid, np.asarray(matrices)[:, 2, :])


def work_units(classes, unit_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(unit_of_particle (n,), members: one ascending particle-index array per unit)."""
    classes = np.asarray(classes)
    order = np.lexsort((np.arange(len(classes)), classes))
    unit_of_particle = np.empty(len(classes), dtype=np.int64)
    unit = 0
    bounds = np.flatnonzero(np.diff(classes[order])) + 1
    for group in np.split(order, bounds):
        for start in range(0, len(group), unit_size):
            unit_of_particle[group[start : start + unit_size]] = unit
            unit += 1
    return unit_of_particle, members_of(unit_of_particle)


def members_of(unit_of_particle) -> list[np.ndarray]:
    """The ascending particle indices of each unit 0 … max, from each particle's unit."""
    unit_of_particle = np.asarray(unit_of_particle)
    order = np.argsort(unit_of_particle, kind="stable")
    bounds = np.flatnonzero(np.diff(unit_of_particle[order])) + 1
    return np.split(order, bounds) if len(order) else []
