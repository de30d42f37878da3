"""Probes: the consensus density cut into P compact regions, each LO-refined as a module of its own (`discover.run`).

Pure functions of arrays (no files, no MPI). Volumes are ``(N, N, N)`` float arrays indexed ``[z, y, x]``, centre at
index N//2; positions are ``(x, y, z)`` px from the box centre, as in `geometry.volumes`.

The density is the consensus map on the particle's support (`map_support`: above the solvent's noise, inside the
particle's mask when one is given). Its voxels are cut by
k-means on their coordinates, each voxel weighted by its density (`weighted_kmeans`): compact, roughly equal-mass
regions that follow the density rather than a grid. The number of probes (`auto_probe_count`) follows from the
particle's size and the resolution of the search: each probe should hold about `PROBE_DIAMETER_RESOLUTIONS`
resolution elements across (enough signal to be aligned on its own), so P ≈ the density's volume over one such
sphere's, within [`MIN_PROBES`, `MAX_PROBES`] (more probes cost more searches and each holds less signal; fewer
cannot resolve a module boundary, and a module is only found when at least two probes fall in it: twelve probes
give a module of 15 % of the mass about two).
"""

from __future__ import annotations

import numpy as np

DENSITY_FRACTION = 0.04  # the density's threshold, a fraction of the masked map's maximum (the phantoms' mask threshold)
SUPPORT_LOWPASS_PX = 1.5  # without a mask: the map low-passed by this Gaussian σ before its threshold
SUPPORT_NOISE_Z = 4.0  # without a mask: the threshold at least this many σ of the solvent above its mean
PROBE_DIAMETER_RESOLUTIONS = 4.0  # a probe's diameter in resolution elements (auto probe count)
MIN_PROBES, MAX_PROBES = 12, 24
KMEANS_ITERATIONS = 100
REGION_EDGE_PX = 1.0  # the Gaussian σ of the soft seam between neighbouring probes or modules (`soft_region_masks`)
WHOLE_CONTACT_SHARE = 0.8  # a probe placed by position goes whole to a module holding this share of its contact (`module_labels`)


def density_weights(consensus, mask=None) -> np.ndarray:
    """(N, N, N) float64 ≥ 0: the density the probes are cut from: ``consensus · mask`` clipped at 0 on the particle's
    support (`map_support`), zero elsewhere. consensus: (N, N, N) float map; mask: (N, N, N) soft mask in [0, 1] of the
    whole particle, or None."""
    v = np.clip(np.asarray(consensus, dtype=np.float64), 0.0, None)
    if mask is not None:
        v = v * np.clip(np.asarray(mask, dtype=np.float64), 0.0, 1.0)
    return np.where(map_support(consensus, mask), v, 0.0)


def map_support(consensus, mask=None) -> np.ndarray:
    """(N, N, N) bool: the particle's density in a map: the map low-passed by `SUPPORT_LOWPASS_PX` above both
    `DENSITY_FRACTION` of its maximum (in the mask) and `SUPPORT_NOISE_Z` standard deviations above the mean of the
    solvent (outside the mask, mask ≤ 0.01; without a mask, the shell beyond 0.4 N from the centre, where a centred
    particle has no density), inside the mask (≥ 0.5), the specks (connected pieces under 1 % of it) left out. A noisy
    reconstruction's solvent would otherwise fill the mask (a mask drawn with a margin) or much of the box, and the
    module masks made from the density would be that much wider than the modules."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(consensus, dtype=np.float64), SUPPORT_LOWPASS_PX)
    n = smooth.shape[0]
    inside = np.ones(smooth.shape, bool) if mask is None else np.asarray(mask) >= 0.5
    if mask is not None and (np.asarray(mask) <= 0.01).sum() >= 1000:
        solvent = smooth[np.asarray(mask) <= 0.01]
    else:
        solvent = smooth[np.sqrt((voxel_positions_px(smooth.shape) ** 2).sum(1)).reshape(smooth.shape) > 0.4 * n]
    peak = smooth[inside].max() if inside.any() else 0.0
    threshold = max(DENSITY_FRACTION * peak, solvent.mean() + SUPPORT_NOISE_Z * solvent.std()) if solvent.size else DENSITY_FRACTION * peak
    support = (smooth > threshold) & inside
    pieces, count = ndimage.label(support)
    if count > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        support = np.isin(pieces, 1 + np.nonzero(sizes >= 0.01 * sizes.sum())[0])
    return support


def voxel_positions_px(shape) -> np.ndarray:
    """(N³, 3) float64: every voxel's (x, y, z) px from the box centre, in C order of a ``[z, y, x]`` volume."""
    n = shape[0]
    z, y, x = np.meshgrid(*(np.arange(s) - n // 2 for s in shape), indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float64)


def auto_probe_count(n_density_voxels: int, voxel_size_angstrom: float, resolution_angstrom: float) -> int:
    """The number of probes (module docstring): the density's volume over a sphere of `PROBE_DIAMETER_RESOLUTIONS`
    resolution elements across, rounded, within [`MIN_PROBES`, `MAX_PROBES`]."""
    diameter_px = PROBE_DIAMETER_RESOLUTIONS * resolution_angstrom / voxel_size_angstrom
    sphere_voxels = np.pi / 6.0 * diameter_px**3
    return int(np.clip(round(n_density_voxels / sphere_voxels), MIN_PROBES, MAX_PROBES))


def weighted_kmeans(points, weights, k: int, seed: int, iterations: int = KMEANS_ITERATIONS):
    """Weighted k-means (Lloyd's, k-means++ start, fixed seed): (labels (m,) int, centres (k, 3) float64).

    points: (m, 3) float64 positions (px); weights: (m,) float ≥ 0 (the density). Each centre is the weighted mean of
    its points; a centre left without points is moved to the point farthest from its own centre (weighted), so every
    label is used. Deterministic for a seed."""
    points = np.asarray(points, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(points) < k:
        raise ValueError(f"{len(points)} density voxels cannot make {k} probes")
    rng = np.random.default_rng([seed, 31])
    centres = np.empty((k, 3))
    centres[0] = points[rng.choice(len(points), p=w / w.sum())]
    nearest = ((points - centres[0]) ** 2).sum(1)
    for j in range(1, k):  # k-means++: the next centre drawn with probability ∝ weight · squared distance
        p = w * nearest
        centres[j] = points[rng.choice(len(points), p=p / p.sum())]
        nearest = np.minimum(nearest, ((points - centres[j]) ** 2).sum(1))
    labels = np.full(len(points), -1)
    for _ in range(iterations):
        distance = (points**2).sum(1)[:, None] - 2.0 * points @ centres.T + (centres**2).sum(1)[None, :]
        new = np.argmin(distance, axis=1)
        mass = np.bincount(new, weights=w, minlength=k)
        for j in np.nonzero(mass <= 0)[0]:  # an empty probe takes the worst-fitted voxel
            far = int(np.argmax(w * distance[np.arange(len(points)), new]))
            new[far] = j
            mass = np.bincount(new, weights=w, minlength=k)
        sums = np.stack([np.bincount(new, weights=w * points[:, a], minlength=k) for a in range(3)], axis=1)
        centres = sums / mass[:, None]
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, centres


def cut_probes(density, k: int, seed: int):
    """The density (`density_weights`) cut into ``k`` probes: (label volume (N, N, N) int16, −1 outside the density
    and the probe index elsewhere; centres (k, 3) xyz px, each probe's centre of mass)."""
    density = np.asarray(density, dtype=np.float64)
    inside = density.ravel() > 0
    points = voxel_positions_px(density.shape)[inside]
    labels, centres = weighted_kmeans(points, density.ravel()[inside], k, seed)
    volume = np.full(density.size, -1, dtype=np.int16)
    volume[inside] = labels
    return volume.reshape(density.shape), centres


def contacts(probe_labels, n_probes: int) -> np.ndarray:
    """(P, P) int64: how many voxel faces each pair of probes shares (a voxel of one face-adjacent to a voxel of the
    other), symmetric, 0 on the diagonal; > 0 where two probes touch. probe_labels: (N, N, N) int, −1 outside the density
    (`cut_probes`)."""
    labels = np.asarray(probe_labels)
    count = np.zeros((n_probes, n_probes), dtype=np.int64)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        first, second = a[:-1].ravel(), a[1:].ravel()
        both = (first >= 0) & (second >= 0) & (first != second)
        np.add.at(count, (first[both], second[both]), 1)
    return count + count.T


def contact_shares(contact, probe: int, probe_module, placed) -> np.ndarray:
    """(K,) the share of a probe's contact (faces, `contacts`) with the probes ``placed`` (P,) bool that lies on each
    module's (K = probe_module.max() + 1); all zeros when it touches none of them."""
    probe_module = np.asarray(probe_module)
    k = int(probe_module.max()) + 1
    faces = np.bincount(probe_module[placed], weights=np.asarray(contact)[probe][placed], minlength=k)
    return faces / faces.sum() if faces.sum() > 0 else faces


def placed_whole(contact, probe: int, probe_module, by_motion) -> int | None:
    """The module a probe placed by position goes to whole: the one holding at least `WHOLE_CONTACT_SHARE` of its contact
    (`contacts`) with the probes placed by motion (``by_motion`` (P,) bool), where it lies inside; None when no module
    does (it straddles a seam and is split, `module_labels`)."""
    shares = contact_shares(contact, probe, probe_module, by_motion)
    return int(np.argmax(shares)) if shares.max() >= WHOLE_CONTACT_SHARE else None


def module_labels(probe_labels, probe_module, by_motion, contact=None) -> np.ndarray:
    """(N, N, N) int16: the module of every density voxel, −1 outside. probe_labels: (N, N, N) the probes (`cut_probes`);
    probe_module: (P,) each probe's module; by_motion: (P,) bool, the probes placed by their motion
    (`coherence.Grouping.by_motion`). A voxel of a probe placed by motion takes its probe's module. A probe placed by
    position only goes whole to the module that holds at least `WHOLE_CONTACT_SHARE` of its contact with the probes
    placed by motion (it lies inside that module, touching another at most along an edge); otherwise (it straddles a
    seam) each of its voxels takes the module of the nearest voxel of a probe placed by motion (Euclidean), which splits
    it between the modules on either side instead of giving it whole to one. contact: `contacts` of ``probe_labels``
    when already counted, or None."""
    from scipy import ndimage

    probe_labels = np.asarray(probe_labels)
    probe_module, by_motion = np.asarray(probe_module), np.asarray(by_motion, dtype=bool)
    inside = probe_labels >= 0
    index = np.clip(probe_labels, 0, None)
    modules = np.where(inside, probe_module[index], -1).astype(np.int16)
    if by_motion.all() or not by_motion.any():
        return modules
    contact = contacts(probe_labels, len(probe_module)) if contact is None else contact
    split = np.zeros(len(probe_module), dtype=bool)
    for p in np.nonzero(~by_motion)[0]:
        whole = placed_whole(contact, p, probe_module, by_motion)
        if whole is None:
            split[p] = True
        else:
            modules[probe_labels == p] = whole
    if not split.any():
        return modules
    nearest = ndimage.distance_transform_edt(~(inside & by_motion[index]), return_distances=False, return_indices=True)
    return np.where(inside & split[index], modules[tuple(nearest)], modules).astype(np.int16)


def soft_region_masks(density, labels, n_regions: int) -> list:
    """One soft mask per region of a label volume (``labels``: (N, N, N) int, −1 outside, 0…n_regions−1 inside), float32.

    The masks share one soft mask of the whole density in the convention of lorefine's and RELION's masks
    (`simulate.phantoms.soft_masks`: low-pass, threshold, dilation, cosine edge) and split it among the regions:
    ``M_r = W · g_r``, g_r the indicator of the voxels nearest to region r smoothed by `REGION_EDGE_PX` (a soft seam
    between neighbouring regions). The masks sum to W ≤ 1 and each region's own density stays at full weight away from
    its seams (cutting the whole mask, not dilating every region, which would share most of a small region's voxels
    with its neighbours)."""
    from scipy import ndimage

    from lorefine_mpi.simulate.phantoms import soft_masks

    density = np.asarray(density, dtype=np.float64)
    labels = np.asarray(labels)
    whole = soft_masks([density])[0].astype(np.float64)
    nearest = ndimage.distance_transform_edt(labels < 0, return_distances=False, return_indices=True)
    owner = labels[tuple(nearest)]
    shares = np.stack([ndimage.gaussian_filter((owner == r).astype(np.float64), REGION_EDGE_PX) for r in range(n_regions)])
    shares /= np.maximum(shares.sum(axis=0), 1e-12)
    return [(whole * g).astype(np.float32) for g in shares]


def hard_labels(masks) -> np.ndarray:
    """(N, N, N) int16: the index of the largest mask at each voxel where the masks sum to ≥ 0.5, −1 elsewhere (the
    hard labels a Dice coefficient compares)."""
    stack = np.stack([np.asarray(m) for m in masks])
    best = np.argmax(stack, axis=0).astype(np.int16)
    return np.where(stack.sum(axis=0) >= 0.5, best, np.int16(-1))
