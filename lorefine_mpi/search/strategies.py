"""The two search strategies of the paper (Fig. 3), each over a whole work unit at once.

A strategy sees the unit's particles (``batch``: `search.local.Particle` records, each with its candidates, its
working image, its templates and its `Posterior`) and asks the unit's search (``search``: `search.local.UnitSearch`)
for scores of many particles in one call — `grid_scores` (every whole-pixel shift), `candidate_cubes` (every
candidate), `point_scores` (given shifts) — so the back-end gets a unit's particles × candidates per call. What a
strategy decides per particle (the best candidate, the sub-pixel shift, the estimate) depends on that particle alone.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.search.registry import Option


def logsumexp_rows(values) -> np.ndarray:
    """log Σ exp over the last axis of (n, m) values (−inf rows give −inf): (n,) float64."""
    values = np.asarray(values, dtype=np.float64)
    peak = values.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(values - peak).sum(axis=-1)) + peak[..., 0]


class Strategy(Option):
    exhaustive = False  # scores every (angle, direction, shift): a flat-prior pilot's cubes can stand in for its own

    def evaluations_per_particle(self, n_orientations: float, n_shifts: int, n_random_angles: int) -> float:
        """Eq. 1 evaluations per particle and module (for `lorefine check`)."""
        return n_orientations * n_shifts

    def search(self, search, batch, known) -> list:
        """The best (pose (3, 3), image-frame shift (2,) px, CCC, `ParticleScores`, `PosePosterior`) of every particle
        of ``batch``.
        known: per particle None or the `ParticleScores` of an earlier search of it (the prior's pilot)."""
        return []


class Simultaneous(Strategy):
    """Fig. 3A: every (direction, ψ, shift) candidate; the best shift refined by a parabola, then every angle scored
    again at that sub-pixel shift (on the integer grid the angle absorbs the shift's rounding)."""

    name = "simultaneous"
    exhaustive = True

    def search(self, search, batch, known):
        reused = [search.reusable(p, None if known is None else known[p.index]) for p in batch]
        fresh = iter(search.candidate_cubes([p for p, cube in zip(batch, reused) if cube is None]))
        cubes = [cube if cube is not None else next(fresh) for cube in reused]
        shifts, shift_posteriors = [], []
        for p, cube in zip(batch, cubes):
            log_posterior = p.posterior.log_posterior_of_cube(cube)
            t, k, _ = np.unravel_index(np.argmax(log_posterior if p.posterior.active else cube), cube.shape)
            shifts.append(p.posterior.subpixel_shifts(cube[t, k][None])[0])
            shift_posteriors.append(logsumexp_rows(log_posterior.reshape(-1, log_posterior.shape[-1]).T))
        at_shifts = search.point_scores(batch, shifts)
        out = []
        for p, cube, shift, at_shift, shift_posterior in zip(batch, cubes, shifts, at_shifts, shift_posteriors):
            at_shift = np.where(p.valid, at_shift, -np.inf)
            t, k = np.unravel_index(np.argmax(p.posterior.of_angles(at_shift)), at_shift.shape)
            pose = search.estimate(p, at_shift, t, k)
            out.append((pose, shift, at_shift[t, k], search.particle_scores(p, cube.astype(np.float32, copy=False), shift,
                                                                            at_shift.astype(np.float32)),
                        search.pose_posterior(p, at_shift, t, k, pose, shift_posterior)))
        return out


class Separate(Strategy):
    """Fig. 3B: n random (direction, ψ) of the particle's set (its own seed), each over every shift; their best
    shifts (sub-pixel) averaged; then every (direction, ψ) at that shift."""

    name = "separate"

    def evaluations_per_particle(self, n_orientations, n_shifts, n_random_angles):
        return n_random_angles * n_shifts + n_orientations

    def search(self, search, batch, known):
        picks = []
        for p in batch:
            pairs = np.argwhere(p.valid)
            rng = np.random.default_rng(p.seed)
            picked = pairs[rng.choice(len(pairs), size=min(search.settings.n_random_angles, len(pairs)), replace=False)]
            ut, it = np.unique(picked[:, 0], return_inverse=True)
            uk, ik = np.unique(picked[:, 1], return_inverse=True)
            picks.append((ut, it, uk, ik))
        grids = search.grid_scores(batch, [ut for ut, _, _, _ in picks], [uk for _, _, uk, _ in picks])
        rows = [grid[it, :, ik] for grid, (_, it, _, ik) in zip(grids, picks)]  # (picked, S) each
        shifts = [p.posterior.subpixel_shifts(row).mean(axis=0) for p, row in zip(batch, rows)]
        cubes = search.point_scores(batch, shifts)
        out = []
        for p, cube, shift, row in zip(batch, cubes, shifts, rows):
            cube = np.where(p.valid, cube, -np.inf)
            t, k = np.unravel_index(np.argmax(p.posterior.of_angles(cube)), cube.shape)
            pose = search.estimate(p, cube, t, k)
            out.append((pose, shift, cube[t, k], search.particle_scores(p, cube[:, :, None].astype(np.float32), shift,
                                                                        cube.astype(np.float32), shifts_px=shift[None]),
                        search.pose_posterior(p, cube, t, k, pose, logsumexp_rows(p.posterior.log_posterior_of_shifts(row).T))))
        return out
