"""The prior's widths learned from the data (search.prior): the evidence by hand, and widths that follow the motion."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy.special import logsumexp

from lorefine_mpi.geometry import candidates, rotations, volumes
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import local, prior, score

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def module_map():
    with mrcfile.open(DATA / "phantom_module_1.mrc") as m:
        return np.array(m.data, dtype=np.float32)


def flat_settings(step_deg=2.0, likelihood="profile"):
    return local.SearchSettings("simultaneous", "subtract", np.deg2rad(3 * step_deg), np.deg2rad(step_deg), np.deg2rad(step_deg), 3, 2, 1,
                                8, volumes.circular_mask(48, 30), "none", likelihood=likelihood)


def unit(module_map, n, motion_deg, rng, noise_sd=2.0):
    box = module_map.shape[0]
    fvol = fourier.prepare_volume(volumes.recentre(module_map, volumes.centre_of_mass_px(module_map)), 2)
    a0 = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    truth = a0 @ rotations.from_rotation_vector(rng.normal(0, np.deg2rad(motion_deg), (n, 3)))
    o0 = rng.normal(0, 2, (n, 2))
    clean = fourier.to_real(fourier.project(fvol, truth, o0 + rng.normal(0, 0.5, (n, 2))), box)
    images = fourier.to_fourier(clean + rng.normal(0, noise_sd * clean.std(), clean.shape))
    return fvol, local.UnitInput(images, a0, o0, None, None, np.arange(n), a0, o0)


@pytest.mark.parametrize("likelihood", score.LIKELIHOODS)
def test_log_evidence_matches_the_sum_by_hand(module_map, likelihood):
    fvol, u = unit(module_map, 1, 1.0, np.random.default_rng(0))
    search = local.UnitSearch(fvol, candidates.direction_grid(np.deg2rad(2)), flat_settings(likelihood=likelihood), 48)
    scores = search.run(u).scores[0]
    j = search.work.effective_pixels
    sigma_rot, sigma_px = np.deg2rad([0.7, 2.0]), np.array([0.5, 1.5])
    got = prior.log_evidence(scores, np.deg2rad(2), scores.likelihood(search.settings, j), u.prior_matrices[0], np.zeros(2), sigma_rot, sigma_px)
    if likelihood == "profile":
        by_hand = lambda rho: score.log_likelihood(rho, j)
    else:  # J·ρ_s·ρ / (1 − ρ_s²), ρ_s the particle's ρ at the prior's centre
        assert 0.05 < scores.rho_centre < 0.9
        by_hand = lambda rho: j * scores.rho_centre * float(rho) / (1 - scores.rho_centre**2)
    for a, sr in enumerate(sigma_rot):
        for b, sp in enumerate(sigma_px):
            terms, priors = [], []
            for t, m in enumerate(scores.ms):
                for k in range(len(scores.frames)):
                    if not scores.valid[t, k]:
                        continue
                    theta = rotations.geodesic_angle(local.candidate_pose(scores.frames[k], m, np.deg2rad(2)), u.prior_matrices[0])
                    for s, shift in enumerate(scores.shifts_px):
                        log_prior = -theta**2 / (2 * sr * sr) - (shift**2).sum() / (2 * sp * sp)
                        priors.append(log_prior)
                        terms.append(by_hand(scores.rho[t, k, s]) + log_prior)
            assert got[a, b] == pytest.approx(logsumexp(terms) - logsumexp(priors), abs=1e-6)


def test_the_learned_rotation_width_follows_the_motion(module_map, step_deg=2.0):
    """Sets of 24 particles of the same module moving by 0.5°, 1.5° and 3° per axis: the learned width grows
    with the motion (printed here: 1.41°, 2.0°, 2.83° on a 2° grid; the widths of the grid are √2 apart). The
    smallest motion comes out wider than it is: on the integer grid of shifts, part of the angle's spread
    makes up for the shift's rounding (docs/accuracy.md, Known limits)."""
    grid_rot, grid_px = np.deg2rad(prior.SIGMA_ROT_GRID_DEG), prior.SIGMA_PX_GRID
    learned = []
    for motion in (0.5, 1.5, 3.0):
        fvol, u = unit(module_map, 24, motion, np.random.default_rng(7))
        search = local.UnitSearch(fvol, candidates.direction_grid(np.deg2rad(step_deg)), flat_settings(step_deg), 48)
        total = sum(prior.log_evidence(s, np.deg2rad(step_deg), s.likelihood(search.settings, search.work.effective_pixels), u.prior_matrices[i], np.zeros(2), grid_rot,
                                       grid_px) for i, s in enumerate(search.run(u).scores))
        learned.append(np.rad2deg(prior.learn_widths(total, grid_rot, grid_px)[0]))
    print(step_deg, learned)
    assert learned[0] < learned[1] < learned[2]
    assert learned[0] <= 1.5 and learned[2] >= 2.0


def test_rotation_sum_by_matrix_product_matches_the_log_domain_sum_even_where_terms_underflow():
    rng = np.random.default_rng(3)
    ll = rng.normal(0, 30, (40, 9))
    ll[5] = -np.inf  # an invalid candidate
    rot = -rng.uniform(0, 1, (4, 40)) * np.array([1.0, 10.0, 1e3, 1e5])[:, None]  # the last rows underflow in exp
    rot[:, 7] = -np.inf
    ll[:, 3] += 2000.0  # a shift whose log-likelihoods are far above the others
    ll[np.argmax(rot[3])] -= 1000.0  # the narrowest prior's best rotation far from the likelihood's peak: products underflow
    product = np.exp(rot - rot.max(axis=1)[:, None]) @ np.exp(ll - ll.max(axis=0))
    assert (product[3] < prior.UNDERFLOW).all()  # the log-domain fallback is what this row tests
    expected = np.array([[np.logaddexp.reduce(ll[:, s] + rot[a]) for s in range(9)] for a in range(4)])
    np.testing.assert_allclose(prior._sum_over_rotations(ll, rot), expected, rtol=1e-12, atol=1e-9)


def test_a_search_reusing_the_pilots_cubes_equals_one_that_computes_them(module_map, monkeypatch):
    """The simultaneous search with a prior, given the flat-prior pilot's scores of the same particles (one
    unit of two particles here, the pilot in units of one), gives the same poses and scores bit for bit, and
    scores only the angles at its sub-pixel shift (no cube of its own)."""
    import dataclasses

    fvol, u = unit(module_map, 2, 1.0, np.random.default_rng(5))
    directions = candidates.direction_grid(np.deg2rad(2))
    flat = flat_settings()
    pilot = local.UnitSearch(fvol, directions, flat, 48)
    single = [dataclasses.replace(u, images_ft=u.images_ft[i : i + 1], matrices=u.matrices[i : i + 1], origin_px=u.origin_px[i : i + 1],
                                  seeds=u.seeds[i : i + 1], prior_matrices=u.prior_matrices[i : i + 1],
                                  prior_origin_px=u.prior_origin_px[i : i + 1]) for i in range(2)]
    known = [pilot.run(x).scores[0] for x in single]
    with_prior = dataclasses.replace(flat, prior_sigma_rad=np.deg2rad(1.0), prior_sigma_px=1.0)
    fresh = local.UnitSearch(fvol, directions, with_prior, 48).run(u)
    search = local.UnitSearch(fvol, directions, with_prior, 48)
    cubes, points = [], []
    original_cubes, original_points = search.candidate_cubes, search.point_scores
    monkeypatch.setattr(search, "candidate_cubes", lambda batch: cubes.append(len(batch)) or original_cubes(batch))
    monkeypatch.setattr(search, "point_scores", lambda batch, shifts: points.append(len(batch)) or original_points(batch, shifts))
    reused = search.run(u, known)
    assert sum(cubes) == 0 and points == [2]  # no cube computed: the angles at the sub-pixel shift only, for both particles
    np.testing.assert_array_equal(reused.matrix, fresh.matrix)
    np.testing.assert_array_equal(reused.origin_px, fresh.origin_px)
    np.testing.assert_array_equal(reused.score, fresh.score)
    for a, b in zip(reused.scores, fresh.scores):
        np.testing.assert_array_equal(a.rho, b.rho)


def test_the_learned_widths_are_continuous_at_the_peak_of_the_evidence_in_log_sigma():
    """A log evidence quadratic in (log σ_rot, log σ_px) peaks between grid points: learn_widths finds that peak, not
    the nearest grid point; at the grid's edge it keeps the edge."""
    grid_rot, grid_px = np.deg2rad(prior.SIGMA_ROT_GRID_DEG), prior.SIGMA_PX_GRID
    peak_rot, peak_px = np.deg2rad(1.3), 0.77
    total = -(np.log(grid_rot / peak_rot)[:, None] ** 2) * 40 - (np.log(grid_px / peak_px)[None, :] ** 2) * 25
    rot, px = prior.learn_widths(total, grid_rot, grid_px)
    assert rot == pytest.approx(peak_rot, rel=1e-9) and px == pytest.approx(peak_px, rel=1e-9)
    edge = -(np.log(grid_rot / 1e-3)[:, None] ** 2) - (np.log(grid_px / 0.77)[None, :] ** 2)
    assert prior.learn_widths(edge, grid_rot, grid_px)[0] == grid_rot[0]


def synthetic_scores(true_rotation, peak_width_deg=0.8, step_deg=2.0, cone_deg=10.0, t1=4):
    """A particle's flat-prior scores (`local.ParticleScores`) on the search's own candidate lattice around the identity
    pose, peaked at the rotation ``true_rotation`` (3, 3): ρ = 0.3 · exp(−θ² / 2w²), θ a candidate's angle from it."""
    directions = candidates.direction_grid(np.deg2rad(step_deg))
    directions = directions[directions[:, 2] >= np.cos(np.deg2rad(cone_deg))]
    frames = local.canonical_frames(directions)
    ms = np.arange(-2 * t1, 2 * t1 + 1)
    poses = local.candidate_pose(frames[None], ms[:, None], np.deg2rad(step_deg))
    theta = rotations.geodesic_angle(poses, true_rotation)
    rho = (0.3 * np.exp(-theta**2 / (2 * np.deg2rad(peak_width_deg) ** 2)))[:, :, None].astype(np.float32)
    valid = np.ones(theta.shape, bool)
    return local.ParticleScores(frames, ms, valid, np.zeros((1, 2)), rho, np.zeros(2), rho[:, :, 0], 0.3)


@pytest.mark.parametrize("hinge", [True, False])
def test_a_hinge_gets_an_anisotropic_prior_about_its_axis_and_a_random_axis_an_isotropic_one(hinge):
    """Modules turned by N(0, 3°) about one axis (a hinge) or about a random axis each: the sample's posterior second
    moment has its widest axis along the hinge, and the evidence keeps the anisotropic prior only for the hinge."""
    rng = np.random.default_rng(8)
    axis = np.array([0.6, 0.0, 0.8])
    likelihood = score.FixedAmplitudeLikelihood(400.0, 0.3)
    grid_rot = np.deg2rad(prior.SIGMA_ROT_GRID_DEG)
    kept = []
    for _ in range(60):
        turn_axis = axis if hinge else rng.normal(size=3)
        true_rotation = rotations.rotation_about_axis(turn_axis / np.linalg.norm(turn_axis), np.deg2rad(rng.normal(0, 3.0)))
        kept.append(synthetic_scores(true_rotation))
    args = (np.deg2rad(2.0), likelihood, np.eye(3), np.zeros(2))
    isotropic = sum(prior.log_evidence(s, *args, grid_rot, np.array([1.0])) for s in kept)[:, 0]
    sigma = prior.learn_widths(isotropic[:, None], grid_rot, np.ones(1))[0]
    moments = np.stack([prior.rotation_moment(s, *args, sigma, 1.0) for s in kept])
    shape = prior.rotation_shape(moments)
    shaped = sum(prior.log_evidence(s, *args, grid_rot, np.array([1.0]), rotation_shape=shape) for s in kept)[:, 0]
    width, chosen, gain = prior.shaped_width(isotropic, shaped, grid_rot, shape)
    values, vectors = np.linalg.eigh(shape)
    if hinge:
        assert chosen is not None and gain > prior.SHAPE_EVIDENCE_NATS
        assert abs(vectors[:, -1] @ axis) > np.cos(np.deg2rad(10))  # the widest axis is the hinge's
        assert values[-1] / values[0] > 10
        assert np.rad2deg(width * np.sqrt(values[-1])) == pytest.approx(3.0, rel=0.35)  # its σ along the hinge: about 3°
    else:
        assert chosen is None and values[-1] < prior.SHAPE_MIN_RATIO * values[0]
