"""`discover`'s kernels: probes that cover the density, the displacement a rigid motion implies (against a loop), the
coherence of probes that move together or not, the grouping into modules, and the config's one-line errors."""

import numpy as np
import pytest

from lorefine_mpi.discover import coherence as coh
from lorefine_mpi.discover import probes as prb
from lorefine_mpi.discover.config import discover_config_from_dict
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import rotations


def two_blobs(n=32):
    """Two Gaussian blobs of different mass, (N, N, N) float64."""
    x = prb.voxel_positions_px((n, n, n)).reshape(n, n, n, 3)
    a = np.exp(-((x - [-6, 0, 0]) ** 2).sum(-1) / (2 * 3.5**2))
    b = 0.7 * np.exp(-((x - [7, 2, 0]) ** 2).sum(-1) / (2 * 2.5**2))
    return a + b


def test_probes_cover_the_density_and_are_compact():
    density = prb.density_weights(two_blobs())
    labels, centres = prb.cut_probes(density, 6, seed=1)
    inside = density > 0
    assert inside.sum() > 500
    assert np.array_equal(labels >= 0, inside)  # every density voxel in one probe, nothing outside
    counts = np.bincount(labels[inside], minlength=6)
    assert (counts > 0).all()
    points = prb.voxel_positions_px(density.shape)
    for p in range(6):  # compact: a probe's voxels lie near its centre (no probe spans both blobs)
        mine = points[labels.ravel() == p]
        assert np.linalg.norm(mine - centres[p], axis=1).max() < 9.0
    masks = prb.soft_region_masks(density, labels, 6)
    total = sum(masks)
    assert total.max() <= 1.0 + 1e-6
    covered = (density * (total >= 0.5)).sum() / density.sum()
    assert covered > 0.99
    hard = prb.hard_labels(masks)
    assert np.array_equal(hard >= 0, total >= 0.5)
    assert (hard[inside] == labels[inside]).mean() > 0.95  # the masks' hard labels are the probes
    for p in range(6):  # each probe's own density keeps most of its weight (the seams are soft, not shared wholesale)
        mine = labels == p
        assert (density * masks[p])[mine].sum() > 0.75 * density[mine].sum()


def test_probes_are_the_same_for_a_seed():
    density = prb.density_weights(two_blobs())
    a, _ = prb.cut_probes(density, 5, seed=4)
    b, _ = prb.cut_probes(density, 5, seed=4)
    assert np.array_equal(a, b)


def test_auto_probe_count_follows_size_and_resolution():
    assert prb.auto_probe_count(10, 1.0, 4.0) == prb.MIN_PROBES
    assert prb.auto_probe_count(10**8, 1.0, 4.0) == prb.MAX_PROBES
    sphere = np.pi / 6 * (4 * 2.0) ** 3  # 2 Å resolution at 1 Å/px: 8 px across
    assert prb.auto_probe_count(int(20 * sphere), 1.0, 2.0) == 20


def test_displacements_match_a_loop_over_particles_and_points():
    rng = np.random.default_rng(0)
    p, n, q = 3, 5, 4
    a0 = rotations.from_rotation_vector(rng.normal(size=(n, 3)))
    a = np.stack([a0 @ rotations.from_rotation_vector(rng.normal(0, 0.05, (n, 3))) for _ in range(p)])
    o0, o = rng.normal(size=(n, 2)), rng.normal(size=(p, n, 2))
    points = rng.normal(0, 10, (q, 3))
    d = coh.displacements_px(a, o, a0, o0, points)
    for i in range(p):
        for j in range(n):
            for k in range(q):  # a point x is seen at (A x)_xy − o
                expected = ((a[i, j] @ points[k])[:2] - o[i, j]) - ((a0[j] @ points[k])[:2] - o0[j])
                np.testing.assert_allclose(d[i, j, k], expected, atol=1e-12)


def motions(groups, n=400, noise_px=0.3, sigma_rad=0.05, sigma_px=1.0, seed=0):
    """Displacements (P, n, Q, 2) of probes in rigid groups: ``groups`` (P,) the group of each probe (−1: a probe
    that does not move), each group turned about its own centre and shifted independently, plus noise."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    centres = rng.normal(0, 10, (len(groups), 3))
    a0 = rotations.from_rotation_vector(rng.normal(size=(n, 3)))
    o0 = rng.normal(size=(n, 2))
    a, o = np.repeat(a0[None], len(groups), 0), np.repeat(o0[None], len(groups), 0).copy()
    for g in set(groups.tolist()) - {-1}:
        q = rotations.from_rotation_vector(rng.normal(0, sigma_rad, (n, 3)))
        t = rng.normal(0, sigma_px, (n, 2))
        centre = centres[groups == g].mean(0)
        for p in np.nonzero(groups == g)[0]:  # the group's motion about its centre: A = A0 Q, o = o0 + (A0 c − A c)_xy − t
            a[p] = a0 @ q
            o[p] = o0 + np.einsum("nij,j->ni", a0 - a[p], centre)[:, :2] - t
    d = coh.displacements_px(a, o, a0, o0, centres) + rng.normal(0, noise_px, (len(groups), n, len(groups), 2))
    return d, centres


def grouped(groups, **kw):
    d, centres = motions(groups, **kw)
    v = np.full(d.shape[:2], 0.1)
    c = coh.coherence_matrix(d, v)
    return c, coh.group_probes(c, coh.null_sigma(d, v, seed=1))


def test_two_modules_moving_independently_are_two():
    c, g = grouped([0, 0, 0, 1, 1, 1, 1])
    assert g.n_modules == 2
    assert list(g.labels) == [0, 0, 0, 1, 1, 1, 1]
    assert c[0, 1] > 0.9 and abs(c[0, 4]) < 0.2


def test_three_modules_and_a_noisy_probe_joins_the_module_it_agrees_with():
    groups = [0, 0, 1, 1, 1, 2, 2, 2]
    d, centres = motions(groups, seed=3)
    d[7] = 0.1 * d[7] + np.random.default_rng(5).normal(0, 2.0, d[7].shape)  # weak signal, much noise
    v = np.full(d.shape[:2], 0.1)
    c = coh.coherence_matrix(d, v)
    g = coh.group_probes(c, coh.null_sigma(d, v, seed=1))
    assert not g.coherent[7] and g.coherent[:7].all()
    assert g.n_modules == 3
    assert list(g.labels) == groups
    assert g.by_motion.all()  # joined by its agreement (beyond JOIN_Z σ), not by its position


def test_a_rigid_particle_is_one_module():
    for groups in ([-1] * 7, [0] * 7):  # nothing moves (noise only), or everything moves as one
        c, g = grouped(groups)
        assert g.n_modules == 1, groups
        assert (g.labels == 0).all()


def test_coherence_weights_particles_by_their_spread():
    d, _ = motions([0, 0], n=300, noise_px=0.0)
    noisy = d.copy()
    bad = np.arange(150)
    noisy[1, bad] = np.random.default_rng(2).normal(0, 5.0, noisy[1, bad].shape)  # half the particles: probe 2 is noise
    v = np.full(d.shape[:2], 0.01)
    flat = coh.coherence_matrix(noisy, v)[0, 1]
    v[1, bad] = 100.0  # their posterior says so
    weighted = coh.coherence_matrix(noisy, v)[0, 1]
    assert weighted > 0.95 > flat


def test_bad_discover_keys_are_one_line_errors(tmp_path):
    base = {"particles": "p.star", "consensus_map": "c.mrc", "output": "out"}
    with pytest.raises(InputError, match=r"discover\.probs: unknown key \(did you mean 'probes'\?\)"):
        discover_config_from_dict(base | {"discover": {"probs": 8}}, tmp_path)
    with pytest.raises(InputError, match=r"discover\.probes: must be auto or a whole number of probes in \[2, 64\], got 1"):
        discover_config_from_dict(base | {"discover": {"probes": 1}}, tmp_path)
    with pytest.raises(InputError, match=r"modules: not a discover key"):
        discover_config_from_dict(base | {"modules": "whole"}, tmp_path)
    with pytest.raises(InputError, match=r"search\.cone_half_angle_deg: must be in \(0, 90\]"):
        discover_config_from_dict(base | {"search": {"cone_half_angle_deg": 100}}, tmp_path)
    ok = discover_config_from_dict(base | {"discover": {"probes": 8, "sample_size": 500}}, tmp_path)
    assert ok.settings.probes == 8 and ok.mask is None and ok.output == str(tmp_path / "out")


def test_without_a_mask_the_support_is_the_particle_not_the_solvent():
    rng = np.random.default_rng(3)
    clean = two_blobs()
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    support = prb.map_support(noisy)
    particle = clean > 0.1
    assert (support & particle).sum() > 0.9 * particle.sum()  # the particle is in
    assert (support & (clean < 0.01)).sum() < 0.02 * support.sum()  # the solvent is out
    assert np.array_equal(prb.density_weights(noisy) > 0, support & (noisy > 0))


def test_the_documented_config_is_valid_and_shows_the_defaults():
    from pathlib import Path

    from lorefine_mpi.discover.config import DiscoverSettings, load_discover_config

    documented = load_discover_config(Path(__file__).resolve().parents[2] / "configs" / "default_discover.yaml")
    assert documented.settings == DiscoverSettings()


def test_a_probe_without_signal_joins_the_module_of_its_nearest_grouped_probe():
    groups = [0, 0, 0, 1, 1, 1]
    d, centres = motions(groups + [-1], seed=4)  # probe 6 does not move: its field is noise only
    centres[6] = centres[4] + 0.5  # and it sits beside probe 4
    v = np.full(d.shape[:2], 0.1)
    c = coh.coherence_matrix(d, v)
    g = coh.group_probes(c, coh.null_sigma(d, v, seed=1), centres_px=centres)
    assert not g.coherent[6] and g.n_modules == 2
    assert list(g.labels) == groups + [1]
    centres[6] = centres[0] + 0.5
    assert list(coh.group_probes(c, g.null_sigma, centres_px=centres).labels) == groups + [0]


def test_probes_whose_learned_shift_is_nil_are_one_module_whatever_their_coherence():
    assert not coh.moves([0.0625, 0.0625, 0.11, 0.0625])  # the pilot found no motion (the width grid's floor)
    assert coh.moves([0.6, 0.0625, 0.9, 0.8]) and coh.moves([None, None])
    c, g = grouped([0, 0, 0, 1, 1, 1, 1])
    assert g.n_modules == 2
    assert coh.group_probes(c, g.null_sigma, moving=False).n_modules == 1


def test_auto_probes_are_fewer_when_a_probe_would_be_smaller_than_a_module_may_be():
    """Each probe is refined as a module (at least 10,000 Å³): `probes: auto` lowers the count until every probe's mask
    holds that; a count given that makes a smaller probe is a one-line error naming discover.probes."""
    from lorefine_mpi.discover.run import probes_large_enough
    from lorefine_mpi.refine.preflight import MIN_MODULE_VOLUME_ANGSTROM3

    density = prb.density_weights(two_blobs())
    voxel = 2.3  # the whole mask holds about 14.6 modules' worth: 24 probes cannot all be large enough
    whole = sum(float(m.sum()) for m in prb.soft_region_masks(density, prb.cut_probes(density, 1, seed=1)[0], 1)) * voxel**3
    assert 12 * MIN_MODULE_VOLUME_ANGSTROM3 < whole < 24 * MIN_MODULE_VOLUME_ANGSTROM3
    labels, masks, count = probes_large_enough(density, 24, 1, voxel, auto=True)
    assert 2 <= count < 24 and len(masks) == count and labels.max() == count - 1
    assert min(float(m.sum()) for m in masks) * voxel**3 >= MIN_MODULE_VOLUME_ANGSTROM3
    with pytest.raises(InputError, match="^discover.probes: 24 probes make one of"):
        probes_large_enough(density, 24, 1, voxel, auto=False)
    with pytest.raises(InputError, match="too small to cut into two probes"):
        probes_large_enough(density, 24, 1, 0.5, auto=True)


def test_a_probe_placed_by_position_is_split_at_a_seam_and_whole_inside_a_module():
    """A seam probe whose motion agrees with no module (a blend of two) is not given whole to one: each of its voxels
    goes to the module of the nearest voxel of a probe placed by motion. A probe placed by position that lies inside one
    module (at least WHOLE_CONTACT_SHARE of its faces on that module's probes) goes to it whole. Probes placed by motion
    keep all their voxels."""
    n = 24
    x = prb.voxel_positions_px((n, n, n))[:, 0].reshape(n, n, n)
    probes = np.clip(((x + 10) // 4).astype(int), 0, 4)  # five slabs along x: probes 0…4, 4 px thick (the last wider)
    probes[np.abs(prb.voxel_positions_px((n, n, n))[:, 1:]).max(1).reshape(n, n, n) > 5] = -1  # a bar, −1 around it
    module = np.array([0, 0, 1, 1, 1])  # probe 2, the seam, was joined to module 1 by its position
    by_motion = np.array([True, True, False, True, True])
    labels = prb.module_labels(probes, module, by_motion)
    assert labels.dtype == np.int16 and np.array_equal(labels < 0, probes < 0)
    for p in (0, 1, 3, 4):
        assert (labels[probes == p] == module[p]).all()
    seam = probes == 2  # x ∈ [−2, 2): its voxels nearer probe 1 (x < 0) to module 0, the others to module 1
    assert np.array_equal(labels[seam], np.where(x[seam] < 0, 0, 1))
    inside = np.array([0, 0, 0, 1, 1])  # now probe 2 lies inside module 0 (its faces on probe 1 and on probe 3 …
    half = probes.copy()
    half[(probes == 3) & (prb.voxel_positions_px((n, n, n))[:, 1].reshape(n, n, n) < 4)] = 1  # … but most of probe 3 is probe 1's)
    shares = prb.contact_shares(prb.contacts(half, 5), 2, inside, by_motion)
    assert shares[0] >= prb.WHOLE_CONTACT_SHARE
    assert (prb.module_labels(half, inside, by_motion)[half == 2] == 0).all()
    everything = prb.module_labels(probes, module, np.ones(5, bool))
    assert np.array_equal(everything, np.where(probes >= 0, module[np.clip(probes, 0, None)], -1))


def test_probes_joined_by_their_nearest_neighbour_are_not_placed_by_motion():
    groups = [0, 0, 0, 1, 1, 1]
    d, centres = motions(groups + [-1], seed=4)
    v = np.full(d.shape[:2], 0.1)
    c = coh.coherence_matrix(d, v)
    g = coh.group_probes(c, coh.null_sigma(d, v, seed=1), centres_px=centres)
    assert list(g.by_motion) == [True] * 6 + [False]
    rigid = coh.group_probes(c, g.null_sigma, centres_px=centres, moving=False)
    assert rigid.by_motion.all()


def test_probe_contacts_count_the_voxel_faces_they_share():
    labels = np.full((6, 6, 6), -1)
    labels[1:3, 1:3, 1:3] = 0
    labels[3:5, 1:3, 1:3] = 1  # beside probe 0 along z: 2 × 2 faces
    labels[1:3, 1:3, 4:6] = 2  # one empty voxel away from probe 0 along x
    labels[3, 3, 4] = 2  # touches probe 1 only along a diagonal: not a face
    assert prb.contacts(labels, 3).tolist() == [[0, 4, 0], [4, 0, 0], [0, 0, 0]]


def test_a_lone_probe_joins_by_its_motion_only_a_module_it_touches():
    """A rigid module is one piece of density: a lone probe that agrees (a few σ_null) with a module it does not touch,
    and not with the one around it, is placed by position (its voxels go to its neighbours), not given to the far one."""
    c = np.zeros((7, 7))
    c[:3, :3] = c[3:6, 3:6] = 0.5
    c[6, 3:6] = c[3:6, 6] = 0.06  # 6σ with module 1 ...
    c[6, :3] = c[:3, 6] = -0.08  # ... and negative with module 0, around it
    np.fill_diagonal(c, 1.0)
    sigma = 0.01
    centres = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [20, 0, 0], [24, 0, 0], [20, 4, 0], [-3, -3, 0]], dtype=float)
    anywhere = coh.group_probes(c, sigma, centres_px=centres)
    assert anywhere.labels[6] == anywhere.labels[3] and anywhere.by_motion[6]
    faces = np.zeros((7, 7), dtype=int)
    faces[6, 0] = faces[0, 6] = 40
    near = coh.group_probes(c, sigma, centres_px=centres, contact=faces)
    assert near.labels[6] == near.labels[0] and not near.by_motion[6]
    faces[6, 3] = faces[3, 6] = 5  # once it touches module 1 too, its motion decides
    both = coh.group_probes(c, sigma, centres_px=centres, contact=faces)
    assert both.labels[6] == both.labels[3] and both.by_motion[6]


def test_where_a_lone_probe_goes_does_not_depend_on_the_other_lone_probes_or_their_order():
    """Lone probes are judged against the grouped probes only: probe 7 agrees with module 1 at 2 σ_null, and with lone
    probe 6 (which joins module 1 by its motion) at 0.09; counting 6 in module 1 would lift 7 over 3 σ_null, but only
    when 6 is looked at first. Either order places 7 by position."""
    c = np.zeros((8, 8))
    c[:3, :3] = c[3:6, 3:6] = 0.5
    c[6, 3:6] = c[3:6, 6] = 0.05  # 5 σ with module 1: joins it by motion
    c[7, 3:6] = c[3:6, 7] = 0.02  # 2 σ
    c[6, 7] = c[7, 6] = 0.09  # below τ = 0.1: no group of two
    np.fill_diagonal(c, 1.0)
    centres = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [20, 0, 0], [24, 0, 0], [20, 4, 0], [22, 2, 0], [21, 1, 0]], dtype=float)
    for order in (np.arange(8), np.array([0, 1, 2, 3, 4, 5, 7, 6])):
        g = coh.group_probes(c[np.ix_(order, order)], 0.01, centres_px=centres[order])
        where = {int(p): (int(g.labels[i]), bool(g.by_motion[i])) for i, p in enumerate(order)}
        assert not g.coherent[6] and not g.coherent[7]
        assert where[6] == (where[3][0], True) and where[7] == (where[3][0], False), order
