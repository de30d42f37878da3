"""The built-in procedural phantom: a complex of pseudo-atom modules (the embedded default dataset has two).

Each module fills an ellipsoidal envelope with secondary-structure-like elements made of Gaussian
pseudo-atoms: helix-like rods (atoms on a tight helix around a straight axis), β-sheet-like planes
(a grid of atoms in a plane), and RNA-like double helices (two intertwined strands). The large module
holds about twice the atoms of the small one (a ribosome-like 2:1 mass ratio); the two envelopes touch.
Atoms are Gaussians of σ = 0.6 px, so the map holds detail down to about 2 px. Everything is drawn from
one seed. Coordinates are xyz px from the box centre N//2.

With ``mass_fractions`` (K ≥ 2 numbers summing to 1) the complex has K modules instead: module k holds that
fraction of the default phantom's total atoms, in an ellipsoid whose volume is in proportion (the same atom
density); the largest is placed at the centre, then each other module, largest first: along each of a few random
directions from the complex's centre, as close as it can go without overlapping any module placed before it (so it
touches at least one), keeping the direction that lands it nearest the centre (a compact complex); finally the
complex's centre of mass is moved to the box centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lorefine_mpi.geometry import rotations

ATOM_SIGMA_PX = 0.6


@dataclasses.dataclass
class Phantom:
    """module_maps: list of (N, N, N) float32; masks: list of soft masks in [0, 1]; centres_px: (K, 3)."""

    module_maps: list
    masks: list
    centres_px: np.ndarray
    n_atoms: list


def _helix(rng, length_px):
    t = np.arange(0, length_px, 0.375)  # 1.5 Å rise at 4 Å/px
    angle = np.deg2rad(100.0) * np.arange(len(t))
    return np.stack([0.6 * np.cos(angle), 0.6 * np.sin(angle), t - length_px / 2], -1)


def _sheet(rng, size_px):
    u = np.arange(-size_px / 2, size_px / 2, 1.2)
    v = np.arange(-size_px / 2, size_px / 2, 0.85)
    a, b = np.meshgrid(u, v)
    pleat = 0.25 * np.cos(np.pi * np.arange(a.size) % 2)
    return np.stack([a.ravel(), b.ravel(), pleat], -1)


def _double_helix(rng, length_px):
    t = np.arange(0, length_px, 0.35)
    angle = 2 * np.pi * t / 8.5  # one turn per ~34 Å
    strand1 = np.stack([2.5 * np.cos(angle), 2.5 * np.sin(angle), t - length_px / 2], -1)
    strand2 = np.stack([2.5 * np.cos(angle + 2.3), 2.5 * np.sin(angle + 2.3), t - length_px / 2], -1)
    return np.concatenate([strand1, strand2])


def _fill(rng, centre, radii, n_atoms_target):
    """Random elements inside an ellipsoid until it holds about ``n_atoms_target`` atoms."""
    atoms = []
    count = 0
    makers = [(_helix, 0.45, (6, 12)), (_sheet, 0.25, (5, 8)), (_double_helix, 0.2, (8, 14))]
    weights = np.array([m[1] for m in makers]) / sum(m[1] for m in makers)
    radii = np.asarray(radii)
    while count < n_atoms_target:
        maker, _, (lo, hi) = makers[rng.choice(len(makers), p=weights)]
        element = maker(rng, rng.uniform(lo, hi))
        q = rotations.rotation_about_axis(rng.normal(size=3), rng.uniform(0, np.pi))
        position = centre + radii * rng.uniform(-0.8, 0.8, 3)
        placed = element @ q.T + position
        inside = (((placed - centre) / radii) ** 2).sum(1) <= 1.0
        atoms.append(placed[inside])
        count += inside.sum()
    return np.concatenate(atoms)


def atoms_to_map(atoms_px, box, sigma_px=ATOM_SIGMA_PX) -> np.ndarray:
    """Sum of unit Gaussians (σ px) at the atom positions: trilinear splatting, then a Gaussian in Fourier."""
    grid = np.zeros((box, box, box))
    p = np.asarray(atoms_px) + box // 2
    base = np.floor(p).astype(int)
    frac = p - base
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (frac[:, 2] if dz else 1 - frac[:, 2]) * (frac[:, 1] if dy else 1 - frac[:, 1]) * (frac[:, 0] if dx else 1 - frac[:, 0])
                idx = (base[:, 2] + dz, base[:, 1] + dy, base[:, 0] + dx)
                ok = np.all([(i >= 0) & (i < box) for i in idx], axis=0)
                np.add.at(grid, tuple(i[ok] for i in idx), w[ok])
    k = np.fft.fftfreq(box)
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(box), indexing="ij")
    # The splat's own trilinear blur (sinc²) is left in: it adds < 0.3 px of blur.
    blur = np.exp(-2 * np.pi**2 * sigma_px**2 * (kx**2 + ky**2 + kz**2))
    return np.fft.irfftn(np.fft.rfftn(grid) * blur, s=grid.shape, axes=(0, 1, 2)).astype(np.float32)


def soft_masks(module_maps, threshold_fraction=0.04, lowpass_px=1.5, dilate_px=2.0, soft_px=4.0):
    """One soft mask per module: low-pass, threshold at a fraction of the max, exclusive cores (a voxel
    belongs to the module with the higher low-passed density), dilate, cosine edge. Values in [0, 1].

    Memory: the owner of each voxel is found with a running maximum (not a stack of every module), and each
    module's distance transform runs on the box around its core widened by the edge (dilate + soft edge): a voxel
    further out is 0 whatever the exact distance, and one inside has all of the core within the crop, so the
    distances, hence the masks, are those of the whole box."""
    from scipy import ndimage

    smooth = [ndimage.gaussian_filter(m.astype(np.float64), lowpass_px) for m in module_maps]
    owner = np.zeros(smooth[0].shape, dtype=np.int16)  # = argmax over the modules (the first of equal values)
    best = smooth[0].copy()
    for k, s in enumerate(smooth[1:], 1):
        higher = s > best
        owner[higher] = k
        np.maximum(best, s, out=best)
    del best
    margin = int(np.ceil(dilate_px + soft_px)) + 1
    masks = []
    for k, s in enumerate(smooth):
        core = (s > threshold_fraction * s.max()) & (owner == k)
        crop = (slice(None),) * core.ndim
        if core.any():
            where = np.argwhere(core)
            crop = tuple(slice(max(lo - margin, 0), min(hi + margin + 1, size))
                         for lo, hi, size in zip(where.min(0), where.max(0), core.shape))
        distance = ndimage.distance_transform_edt(~core[crop])
        edge = np.clip((distance - dilate_px) / soft_px, 0.0, 1.0)
        mask = np.zeros(core.shape, dtype=np.float32)
        mask[crop] = (0.5 + 0.5 * np.cos(np.pi * edge)).astype(np.float32)
        masks.append(mask)
    del smooth, owner
    total = np.maximum(sum(masks), 1.0)
    for m in masks:
        np.divide(m, total, out=m)
    return masks


def _touching_separation(r_a, r_b, axis) -> float:
    """Smallest distance along ``axis`` between the centres of two axis-aligned ellipsoids at which they
    do not overlap (they touch), found by bisection on points of b's surface."""
    unit = _unit_sphere_points()
    lo, hi = 0.0, 2.0 * float(max(r_a) + max(r_b))
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _overlaps([np.zeros(3)], [r_a], r_b, mid * axis, unit) else (lo, mid)
    return hi


def _unit_sphere_points() -> np.ndarray:
    """(4000, 3) fixed random unit vectors (seed 0): the surface points the overlap tests use."""
    u = np.random.default_rng(0).normal(size=(4000, 3))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def make_phantom(box: int, seed: int, n_atoms_large: int | None = None, mass_fractions=None) -> Phantom:
    """The phantom for a box of N px (N even, ≥ 32): two modules of mass ratio ≈ 2:1 (the default, unchanged
    since the first release: the same random stream), or with ``mass_fractions`` one module per fraction
    (module docstring). ``n_atoms_large``: the default phantom's large-module atoms (the K-module phantom
    holds 1.5 × that in all)."""
    rng = np.random.default_rng(seed)
    n_large = n_atoms_large or int(0.012 * box**3 * 0.25)
    if mass_fractions is not None:
        return _make_k_modules(box, rng, int(1.5 * n_large), mass_fractions)
    r_large = np.array([0.22, 0.19, 0.16]) * box
    r_small = np.array([0.17, 0.15, 0.12]) * box
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    separation = _touching_separation(r_large, r_small, axis)  # the envelopes touch, they do not overlap
    c_large = -axis * separation / 3
    c_small = axis * 2 * separation / 3
    large = _fill(rng, c_large, r_large, n_large)
    small = _fill(rng, c_small, r_small, n_large // 2)
    return _phantom_from_atoms(box, [large, small])


# The envelopes' shape (axis ratios) and the volume of the default pair's two envelopes, in box³ units.
_SHAPE = np.array([0.22, 0.19, 0.16]) / np.prod([0.22, 0.19, 0.16]) ** (1 / 3)
_DEFAULT_VOLUME = np.prod([0.22, 0.19, 0.16]) + np.prod([0.17, 0.15, 0.12])


def _phantom_from_atoms(box, atom_sets) -> Phantom:
    from lorefine_mpi.geometry.volumes import centre_of_mass_px

    maps = [atoms_to_map(atoms, box) for atoms in atom_sets]
    masks = soft_masks(maps)
    centres = np.array([centre_of_mass_px(m) for m in maps])
    return Phantom(maps, masks, centres, [len(a) for a in atom_sets])


def _overlaps(centres, radii, r_new, centre_new, surface_unit) -> bool:
    """Whether an axis-aligned ellipsoid (radii r_new at centre_new) reaches into any of the given ones, tested
    on points of its surface (surface_unit: (M, 3) unit vectors)."""
    points = centre_new + r_new * surface_unit
    return any(((((points - c) / r) ** 2).sum(1) < 1.0).any() for c, r in zip(centres, radii))


def _touching_position(centres, radii, r_new, start, direction) -> np.ndarray:
    """The centre nearest ``start`` along ``direction`` at which an ellipsoid of radii r_new overlaps none of
    the given ones (found by a scan for the outermost overlap, then bisection): it touches at least one."""
    unit = _unit_sphere_points()
    far = 2.0 * float(sum(max(r) for r in radii) + max(r_new))
    steps = np.linspace(0.0, far, 201)
    hit = [_overlaps(centres, radii, r_new, start + t * direction, unit) for t in steps]
    last = max(i for i, h in enumerate(hit) if h) if any(hit) else None
    if last is None:
        return start
    lo, hi = steps[last], steps[last + 1]
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _overlaps(centres, radii, r_new, start + mid * direction, unit) else (lo, mid)
    return start + hi * direction


_N_DIRECTIONS = 6  # random directions tried per module; the one that lands nearest the complex's centre is kept


def _make_k_modules(box, rng, n_atoms_total, mass_fractions) -> Phantom:
    fractions = np.asarray(mass_fractions, dtype=np.float64)
    fractions = fractions / fractions.sum()
    radii = [_SHAPE * (f * _DEFAULT_VOLUME) ** (1 / 3) * box for f in fractions]
    centres = [None] * len(fractions)
    order = np.argsort(-fractions, kind="stable")
    centres[order[0]] = np.zeros(3)
    for k in order[1:]:
        placed = [j for j in range(len(fractions)) if centres[j] is not None]
        weights = fractions[placed]
        middle = (weights[:, None] * np.array([centres[j] for j in placed])).sum(0) / weights.sum()
        directions = rng.normal(size=(_N_DIRECTIONS, 3))
        options = [_touching_position([centres[j] for j in placed], [radii[j] for j in placed], radii[k], middle, d / np.linalg.norm(d))
                   for d in directions]
        centres[k] = min(options, key=lambda c: float(np.linalg.norm(c - middle)))  # the most compact of a few
    middle = (fractions[:, None] * np.array(centres)).sum(0)
    atoms = [_fill(rng, c - middle, r, max(1, int(round(f * n_atoms_total)))) for c, r, f in zip(centres, radii, fractions)]
    return _phantom_from_atoms(box, atoms)
