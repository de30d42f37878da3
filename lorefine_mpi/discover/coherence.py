"""How coherently the probes move, and the modules that follows from it (`discover.run`). Pure functions of arrays.

**Motion as a displacement field.** Probe p's refined pose of particle i, (A_pi, o_pi), and the particle's
consensus pose (A_0i, o_0i) put a volume point x (xyz px from the box centre, consensus frame) in the image at
``(A x)_xy − o`` (`geometry.volumes`: ``o = o' + (A c)_xy`` for a model recentred on c). The probe's rigid motion
therefore moves x in the image by

    d_pi(x) = (A_pi x − A_0i x)_xy − (o_pi − o_0i)        (2,) px

which is exactly what the data determine (the motion along the beam is invisible in one image). Two probes of one
rigid module have the same motion, hence the same field everywhere; evaluated at common points (every probe's centre),
their fields agree particle by particle. The rotation and the shift enter in the unit that matters (px at the
particle's own points), so a small rotation about a far centre and the shift it implies are compared as one.

**Coherence.** C_pq = Σ_i w_pqi ⟨d_pi, d_qi⟩ / sqrt(Σ_i w_pqi |d_pi|² · Σ_i w_pqi |d_qi|²), the correlation (about
zero: the mean motion of every probe was taken out) of the two fields over the particles and the common points.
w_pqi = 1 / (v_pi + v_qi) weights each particle by its posterior spread (`search.local.PosePosterior`):
v_pi = (angle spread_pi · R_p)² + (shift spread_pi)², the variance of probe p's displacement at the rms distance
R_p of the common points from its centre; a particle whose pose the data pin down counts more. C is 1 for probes
that move as one, about 0 for probes that move independently, and about 0 for every pair when nothing moves (a rigid
particle: the fields are only the search's noise).

**Threshold from the data.** The same coherence of every pair with one probe's particles permuted (a pair of fields
that cannot be related) gives the coherence of unrelated motion at this noise and sample size; its spread σ_null
sets the threshold τ = max(`NULL_Z` · σ_null, `MIN_COHERENCE`).

**Does anything move?** Probes whose images overlap share their noise, so two neighbouring probes of a rigid particle
can agree beyond the permutation null (which breaks that sharing). The prior each probe's search learned says whether
it moves at all: when the median of the probes' learned shift widths is below `RIGID_SHIFT_PX` (a quarter pixel),
the particle is one module whatever the coherence.

**Modules.** Average-linkage clustering of the distance 1 − C (`scipy.cluster.hierarchy`), cut where the mean
coherence between two groups falls below τ. Each group of two or more probes is a module (its probes move together,
significantly); a probe coherent with no other (its own noise, too little signal) joins, of the modules it touches,
the one its motion agrees with most when that agreement is beyond noise (`JOIN_Z` σ_null): a rigid module is one
connected piece of density, so a lone probe's agreement with a module it does not touch (a few σ_null, from one probe)
is not taken as evidence against that. Otherwise it is placed by its position, in the module whose probes it shares
most faces with (or, touching none, that of the nearest grouped probe). Each lone probe is judged against the grouped
probes (and, by position, against every probe placed by motion), never against another lone probe's outcome, so no
lone probe's place depends on the others' or on their order. No group of two: nothing moves coherently relative to
the consensus, one module (the particle is rigid).

**Placed by motion, or by position.** A probe grouped, or joined by its agreement, is placed by its motion; a probe
placed by its position only (`Grouping.by_motion` False) has a motion that says nothing about where its voxels belong;
its contact does. Lying inside a module (at least `probes.WHOLE_CONTACT_SHARE` of its faces shared with that module's
probes), it goes to that module whole. Otherwise it straddles a seam (a blend of two motions is coherent with neither),
and each of its voxels goes to the module of the nearest voxel of a probe placed by motion (`probes.module_labels`):
the seam probe is split between the modules on either side.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lorefine_mpi.discover.probes import contact_shares

NULL_Z = 5.0  # the threshold in standard deviations of the coherence of unrelated motion
MIN_COHERENCE = 0.1  # the threshold's floor: probes of one module agree at least this well
NULL_PERMUTATIONS = 8
RIGID_SHIFT_PX = 0.25  # the probes' median learned shift width below which nothing moves (a quarter of a pixel)
JOIN_Z = 3.0  # a probe in no group joins the touching module it agrees with most when that agreement is this many σ_null


def displacements_px(matrices, origin_px, consensus_matrices, consensus_origin_px, points_px) -> np.ndarray:
    """(P, n, Q, 2) float64: each probe's image displacement at the points (module docstring).

    matrices: (P, n, 3, 3) the probes' refined rotations; origin_px: (P, n, 2) px their origins (consensus frame);
    consensus_matrices (n, 3, 3), consensus_origin_px (n, 2) px: the particles' consensus poses; points_px: (Q, 3) xyz
    px from the box centre."""
    a = np.asarray(matrices, dtype=np.float64)
    a0 = np.asarray(consensus_matrices, dtype=np.float64)
    x = np.asarray(points_px, dtype=np.float64)
    moved = np.einsum("pnij,qj->pnqi", (a - a0[None])[..., :2, :], x)
    shift = np.asarray(origin_px, dtype=np.float64) - np.asarray(consensus_origin_px, dtype=np.float64)[None]
    return moved - shift[:, :, None, :]


def displacement_variances(angle_spread_rad, shift_spread_px, centres_px, points_px) -> np.ndarray:
    """(P, n) px²: each probe's displacement variance per particle (module docstring). angle_spread_rad,
    shift_spread_px: (P, n) the posterior spreads; centres_px: (P, 3); points_px: (Q, 3) xyz px."""
    reach = np.sqrt(((np.asarray(points_px)[None] - np.asarray(centres_px)[:, None]) ** 2).sum(-1).mean(-1))  # (P,) rms distance
    v = (np.asarray(angle_spread_rad, dtype=np.float64) * reach[:, None]) ** 2 + np.asarray(shift_spread_px, dtype=np.float64) ** 2
    return np.maximum(v, 1e-6)


def coherence_matrix(d, variances, permutation=None) -> np.ndarray:
    """(P, P) the probes' coherence C (module docstring). d: (P, n, Q, 2) `displacements_px`; variances: (P, n)
    `displacement_variances`; permutation: (n,) particle order applied to the second probe of every pair (the null),
    or None."""
    d = np.asarray(d, dtype=np.float64)
    flat = d.reshape(d.shape[0], d.shape[1], -1)  # (P, n, 2Q)
    v = np.asarray(variances, dtype=np.float64)
    other, v_other = (flat, v) if permutation is None else (flat[:, permutation], v[:, permutation])
    w = 1.0 / (v[:, None, :] + v_other[None, :, :])  # (P, P, n)
    cross = np.einsum("pnk,qnk->pqn", flat, other)
    own = (flat**2).sum(-1)  # (P, n)
    own_other = (other**2).sum(-1)
    num = (w * cross).sum(-1)
    den = np.sqrt((w * own[:, None, :]).sum(-1) * (w * own_other[None, :, :]).sum(-1))
    c = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    if permutation is None:
        np.fill_diagonal(c, 1.0)
        c = 0.5 * (c + c.T)
    return c


def null_sigma(d, variances, seed: int, permutations: int = NULL_PERMUTATIONS) -> float:
    """The spread of the coherence of unrelated motion: the standard deviation, over every pair (p ≠ q) and
    ``permutations`` random particle orders, of `coherence_matrix` with the second probe's particles permuted."""
    rng = np.random.default_rng([seed, 37])
    n, p = d.shape[1], d.shape[0]
    off = ~np.eye(p, dtype=bool)
    values = [coherence_matrix(d, variances, rng.permutation(n))[off] for _ in range(permutations)]
    return float(np.sqrt(np.mean(np.square(np.concatenate(values)))))


@dataclasses.dataclass(frozen=True)
class Grouping:
    """The probes grouped into modules.

    labels: (P,) the module of each probe (0…K−1, modules ordered by their first probe); threshold: τ; null_sigma:
    σ_null; linkage: scipy's (P−1, 4) average-linkage matrix of 1 − C; coherent: (P,) bool, the probes in a group of
    two or more at the cut (the others joined a module afterwards); by_motion: (P,) bool, the probes placed by their
    motion (coherent, or joined by their agreement), not by their position only (module docstring)."""

    labels: np.ndarray
    threshold: float
    null_sigma: float
    linkage: np.ndarray
    coherent: np.ndarray
    by_motion: np.ndarray

    @property
    def n_modules(self) -> int:
        return int(self.labels.max()) + 1

    def criterion_curve(self):
        """(number of clusters k = P−1 … 1, the coherence of the merge that leaves k clusters): the curve the cut is
        read from (a merge below τ is one the cut does not make)."""
        heights = self.linkage[:, 2]
        p = len(self.labels)
        return np.arange(p - 1, 0, -1), 1.0 - heights


def moves(shift_widths_px, floor_px: float = RIGID_SHIFT_PX) -> bool:
    """Whether the probes move at all: the median of their learned shift priors' widths (px; None for a prior not
    learned) at least ``floor_px``. True when no width was learned (nothing to judge by)."""
    learned = [w for w in shift_widths_px if w is not None]
    return not learned or float(np.median(learned)) >= floor_px


def group_probes(c, sigma: float, min_coherence: float = MIN_COHERENCE, null_z: float = NULL_Z, centres_px=None,
                 moving: bool = True, contact=None) -> Grouping:
    """The modules from the coherence matrix ``c`` (P, P) and the null's spread ``sigma`` (module docstring); centres_px:
    (P, 3) the probes' centres (xyz px), for the probes whose motion agrees with no module (`JOIN_Z`), or None;
    moving: `moves` (False: one module whatever the coherence); contact: (P, P) the faces each pair of probes shares
    (`probes.contacts`): a lone probe joins by its motion only a module it touches, and one placed by position the module
    it shares most faces with; None: any module, and the nearest grouped probe's."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    c = np.asarray(c, dtype=np.float64)
    p = len(c)
    threshold = max(null_z * sigma, min_coherence)
    distance = np.clip(1.0 - c, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    linkage = hierarchy.linkage(squareform(distance, checks=False), method="average")
    clusters = hierarchy.fcluster(linkage, t=1.0 - threshold, criterion="distance") - 1
    sizes = np.bincount(clusters)
    groups = [g for g in np.unique(clusters) if sizes[g] >= 2]
    coherent = np.isin(clusters, groups)
    if len(groups) <= 1 or not moving:
        return Grouping(np.zeros(p, dtype=int), threshold, sigma, linkage, coherent, np.ones(p, dtype=bool))
    by_motion = coherent.copy()
    labels = np.full(p, -1)
    for k, g in enumerate(groups):
        labels[clusters == g] = k
    grouped_probes = np.nonzero(coherent)[0]
    lone = np.nonzero(~coherent)[0]
    # Two passes, each against what the pass before settled, so that no lone probe's place depends on another's (nor on
    # their order): first the lone probes placed by their motion (against the grouped probes), then those by position.
    joined = {}
    for probe in lone:  # a probe coherent with no other joins, of the modules it touches, the one it agrees with most
        agreement = np.array([c[probe, coherent & (labels == k)].mean() for k in range(len(groups))])
        if contact is not None:
            touched = np.isin(np.arange(len(groups)), labels[(np.asarray(contact)[probe] > 0) & coherent])
            agreement = np.where(touched, agreement, -np.inf)
        if max(agreement) >= JOIN_Z * sigma or centres_px is None:
            joined[probe] = int(np.argmax(agreement))
            by_motion[probe] = max(agreement) >= JOIN_Z * sigma
    for probe, module in joined.items():
        labels[probe] = module
    for probe in lone:
        if labels[probe] >= 0:
            continue
        # its motion agrees with no module beyond noise: placed by position, in the module it shares most faces with
        # among the probes placed by motion, else that of the nearest grouped probe (modules are compact)
        shares = None if contact is None else contact_shares(contact, probe, labels, by_motion)  # every probe placed by motion has its module
        if shares is not None and shares.sum() > 0:
            labels[probe] = int(np.argmax(shares))
        else:
            distance = np.linalg.norm(np.asarray(centres_px)[grouped_probes] - np.asarray(centres_px)[probe], axis=1)
            labels[probe] = labels[grouped_probes[int(np.argmin(distance))]]
    order = {old: new for new, old in enumerate(dict.fromkeys(labels.tolist()))}  # modules in order of their first probe
    return Grouping(np.array([order[v] for v in labels]), threshold, sigma, linkage, coherent, by_motion)


def module_order(labels) -> np.ndarray:
    """(P,) the probes sorted by module (stable): the order of the report's coherence matrix."""
    return np.argsort(np.asarray(labels), kind="stable")
