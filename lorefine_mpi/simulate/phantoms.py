"""The built-in procedural phantom: a two-module complex of pseudo-atoms (the embedded default dataset).

Each module fills an ellipsoidal envelope with secondary-structure-like elements made of Gaussian
pseudo-atoms: helix-like rods (atoms on a tight helix around a straight axis), β-sheet-like planes
(a grid of atoms in a plane), and RNA-like double helices (two intertwined strands). The large module
holds about twice the atoms of the small one (a ribosome-like 2:1 mass ratio); the two envelopes touch.
Atoms are Gaussians of σ = 0.6 px, so the map holds detail down to about 2 px. Everything is drawn from
one seed. Coordinates are xyz px from the box centre N//2.
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
    belongs to the module with the higher low-passed density), dilate, cosine edge. Values in [0, 1]."""
    from scipy import ndimage

    smooth = [ndimage.gaussian_filter(m.astype(np.float64), lowpass_px) for m in module_maps]
    stack = np.stack(smooth)
    owner = np.argmax(stack, axis=0)
    masks = []
    for k, s in enumerate(smooth):
        core = (s > threshold_fraction * s.max()) & (owner == k)
        distance = ndimage.distance_transform_edt(~core)
        edge = np.clip((distance - dilate_px) / soft_px, 0.0, 1.0)
        masks.append((0.5 + 0.5 * np.cos(np.pi * edge)).astype(np.float32))
    total = np.maximum(sum(masks), 1.0)
    return [(m / total).astype(np.float32) for m in masks]


def _touching_separation(r_a, r_b, axis) -> float:
    """Smallest distance along ``axis`` between the centres of two axis-aligned ellipsoids at which they
    do not overlap (they touch), found by bisection on points of b's surface."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=(4000, 3))
    surface = r_b * (u / np.linalg.norm(u, axis=1, keepdims=True))
    lo, hi = 0.0, 2.0 * float(max(r_a) + max(r_b))
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        inside = (((surface + mid * axis) / r_a) ** 2).sum(1) < 1.0
        lo, hi = (mid, hi) if inside.any() else (lo, mid)
    return hi


def make_phantom(box: int, seed: int, n_atoms_large: int | None = None) -> Phantom:
    """The two-module phantom for a box of N px (N even, ≥ 32). Mass ratio ≈ 2:1."""
    rng = np.random.default_rng(seed)
    n_large = n_atoms_large or int(0.012 * box**3 * 0.25)
    r_large = np.array([0.22, 0.19, 0.16]) * box
    r_small = np.array([0.17, 0.15, 0.12]) * box
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    separation = _touching_separation(r_large, r_small, axis)  # the envelopes touch, they do not overlap
    c_large = -axis * separation / 3
    c_small = axis * 2 * separation / 3
    large = _fill(rng, c_large, r_large, n_large)
    small = _fill(rng, c_small, r_small, n_large // 2)
    maps = [atoms_to_map(large, box), atoms_to_map(small, box)]
    masks = soft_masks(maps)
    from lorefine_mpi.geometry.volumes import centre_of_mass_px

    centres = np.array([centre_of_mass_px(m) for m in maps])
    return Phantom(maps, masks, centres, [len(large), len(small)])
