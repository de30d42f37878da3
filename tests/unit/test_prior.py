"""The Gaussian prior on the module's pose (``search.prior_sigma_*``): the likelihood it is added to, the
sub-grid fits with its pull, and the search's choice, each against a direct computation."""

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from lorefine_mpi.geometry import candidates, rotations, volumes
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import local, score

DATA = Path(__file__).resolve().parents[1] / "data"


def test_log_likelihood_differences_are_those_of_the_gaussian_profile_likelihood():
    """f = a·g + b + white noise of unknown variance, maximised over a, b, σ²: −(J/2)·log(RSS/J) − J/2 + const."""
    rng = np.random.default_rng(0)
    j = 300
    f = rng.normal(size=j)
    refs = rng.normal(size=(4, j)) + 0.5 * f

    def profile(g):
        design = np.stack([g, np.ones(j)], 1)
        rss = ((f - design @ np.linalg.lstsq(design, f, rcond=None)[0]) ** 2).sum()
        sigma2 = rss / j
        return -0.5 * j * np.log(2 * np.pi * sigma2) - 0.5 * rss / sigma2

    rho = np.array([np.corrcoef(f, g)[0, 1] for g in refs])
    ours = score.log_likelihood(rho, j)
    direct = np.array([profile(g) for g in refs])
    np.testing.assert_allclose(ours - ours[0], direct - direct[0], rtol=1e-9, atol=1e-9)
    assert score.log_likelihood(-0.3, j) == score.log_likelihood(0.0, j) == 0.0
    h = 1e-6
    assert score.log_likelihood_slope(0.4, j) == pytest.approx((score.log_likelihood(0.4 + h, j) - score.log_likelihood(0.4 - h, j)) / (2 * h), rel=1e-6)


def test_fixed_amplitude_log_likelihood_differences_are_those_of_the_gaussian_model_with_the_true_amplitude():
    """f = a·g_true + white noise of variance σ², every candidate g of unit variance: log N(f | a·g, σ²) differs between
    candidates by a·⟨f, g⟩ / σ²; `score.Likelihood` ('fixed_amplitude') gives J·ρ_s·ρ / (1 − ρ_s²) from ρ alone, with
    ρ_s = a / √(a² + σ²). The two agree to the spread of |f|² about J·(a² + σ²) (about 1/√J)."""
    rng = np.random.default_rng(5)
    j, a, sigma = 4000, 0.3, 1.0
    truth = rng.normal(size=j)
    candidates_ = truth[None] + rng.normal(0, 0.4, (6, j))  # references near the true one
    candidates_ = (candidates_ - candidates_.mean(1, keepdims=True)) / candidates_.std(1, keepdims=True)
    truth = (truth - truth.mean()) / truth.std()
    f = a * truth + rng.normal(0, sigma, j)
    f = f - f.mean()
    exact = np.array([-((f - a * g) ** 2).sum() / (2 * sigma**2) for g in candidates_])
    rho = candidates_ @ f / (np.linalg.norm(candidates_, axis=1) * np.linalg.norm(f))
    rho_s = a / np.sqrt(a * a + sigma * sigma)
    ours = score.FixedAmplitudeLikelihood(j, rho_s)(rho)
    np.testing.assert_allclose(ours - ours[0], exact - exact[0], rtol=0.03)
    assert np.ptp(exact) > 5  # the candidates differ by several nats: the comparison is not trivial
    assert score.FixedAmplitudeLikelihood(j, rho_s).slope(0.1) == pytest.approx(j * rho_s / (1 - rho_s**2))
    assert np.isneginf(score.FixedAmplitudeLikelihood(j, rho_s)(-np.inf))
    assert np.all(score.FixedAmplitudeLikelihood(j, -0.2)(rho) == 0.0)  # no signal at the centre: the prior decides


@pytest.mark.parametrize("peak,centre,weight", [((0.3, -0.2), (-2.0, 1.0), 0.5), ((-0.1, 0.4), (0.5, 0.5), 3.0), ((0.2, 0.1), (0.0, 0.0), 0.0)])
def test_subpixel_peak_with_a_prior_is_the_top_of_parabola_minus_prior(peak, centre, weight):
    shifts = score.shift_grid(2, 1)
    values = -((shifts - np.array(peak)) ** 2).sum(1)  # a paraboloid, separable, exact on each axis
    found = score.subpixel_peak(values[None], shifts, prior_weight=np.array([weight]), prior_centre_px=np.array([centre]))[0]
    fine = np.linspace(-0.5, 0.5, 20001)
    for axis in (0, 1):  # the best grid point is (0, 0): brute force over the half-pixel either side
        objective = -((fine - peak[axis]) ** 2) - 0.5 * weight * (fine - centre[axis]) ** 2
        assert found[axis] == pytest.approx(fine[np.argmax(objective)], abs=1e-4)


def test_quadratic_peak_rotation_with_a_prior_is_the_top_of_the_quadratic_minus_prior():
    rng = np.random.default_rng(2)
    best = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, 3))
    step = np.deg2rad(2.0)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    poses = rotations.from_rotation_vector(offsets * step) @ best
    u = rotations.rotation_vector(poses @ best.T) / step
    hessian = -np.array([[3.0, 0.5, 0.2], [0.5, 2.0, -0.3], [0.2, -0.3, 1.5]])
    g = np.array([0.4, -0.2, 0.1])
    scores = 0.8 + u @ g + 0.5 * np.einsum("ki,ij,kj->k", u, hessian, u)
    mu = np.array([-0.6, 0.5, 0.3])
    centre = rotations.from_rotation_vector(mu * step) @ best
    weight = 1.7
    found = score.quadratic_peak_rotation(best, poses, scores, step, prior_weight=weight, prior_centre=centre)
    # by hand: maximise gᵀω + ½ωᵀHω − ½λ|ω − μ|² on a fine grid in the half-step ball
    axis = np.linspace(-0.5, 0.5, 101)
    w = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    w = w[np.linalg.norm(w, axis=1) <= 0.5]
    objective = w @ g + 0.5 * np.einsum("ki,ij,kj->k", w, hessian, w) - 0.5 * weight * ((w - mu) ** 2).sum(1)
    expected = rotations.from_rotation_vector(w[np.argmax(objective)] * step) @ best
    assert np.rad2deg(rotations.geodesic_angle(found, expected)) < 0.02
    without = score.quadratic_peak_rotation(best, poses, scores, step)
    assert np.rad2deg(rotations.geodesic_angle(found, centre)) < np.rad2deg(rotations.geodesic_angle(without, centre))


@pytest.fixture(scope="module")
def module_map():
    with mrcfile.open(DATA / "phantom_module_1.mrc") as m:
        return np.array(m.data, dtype=np.float32)


def noisy_unit(module_map, n, rng, noise_sd, motion_deg=1.5, motion_px=0.7):
    """Images of the module at poses moved from the consensus by a small motion, plus white noise."""
    box = module_map.shape[0]
    fvol = fourier.prepare_volume(volumes.recentre(module_map, volumes.centre_of_mass_px(module_map)), 2)
    a0 = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    truth = a0 @ rotations.from_rotation_vector(rng.normal(0, np.deg2rad(motion_deg) / np.sqrt(3), (n, 3)))
    o0 = rng.normal(0, 2, (n, 2))
    o_true = o0 + rng.normal(0, motion_px, (n, 2))
    clean = fourier.to_real(fourier.project(fvol, truth, o_true), box)
    images = fourier.to_fourier(clean + rng.normal(0, noise_sd * clean.std(), clean.shape))
    return fvol, local.UnitInput(images, a0, o0, None, None, np.arange(n)), truth, o_true


def settings(strategy, prior_deg, prior_px, refinement="quadratic"):
    return local.SearchSettings(strategy, "subtract", np.deg2rad(8), np.deg2rad(2), np.deg2rad(2), 2, 3, 1, 8,
                                volumes.circular_mask(48, 30), refinement,
                                None if prior_deg is None else np.deg2rad(prior_deg), prior_px)


@pytest.mark.parametrize("strategy", ["separate", "simultaneous"])
def test_a_very_wide_prior_changes_nothing(module_map, strategy):
    fvol, unit, _, _ = noisy_unit(module_map, 6, np.random.default_rng(3), noise_sd=1.0)
    grid = candidates.direction_grid(np.deg2rad(2))
    flat = local.UnitSearch(fvol, grid, settings(strategy, None, None), 48).run(unit)
    wide = local.UnitSearch(fvol, grid, settings(strategy, 1e5, 1e5), 48).run(unit)
    np.testing.assert_allclose(wide.matrix, flat.matrix, atol=1e-6)
    np.testing.assert_allclose(wide.origin_px, flat.origin_px, atol=1e-6)
    np.testing.assert_array_equal(wide.score, flat.score)


@pytest.mark.parametrize("likelihood", score.LIKELIHOODS)
def test_the_chosen_candidate_maximises_the_log_posterior_computed_by_hand(module_map, likelihood):
    """Simultaneous search, grid poses: for every candidate (in-plane index m, direction d, image-frame shift
    u) the CCC by hand over the mask between the reference P_{B_d} and the centred image sampled at
    R2(β) z − u (β = m·d1; bilinear from the image upsampled ×2, by scipy), the pose Rz(β)·B_d, the origin
    o0 + u, and the prior's terms by hand, centred away from the preliminary pose (as in a later iteration,
    where the prior stays on the consensus). The search then re-scores the angles at its sub-pixel shift,
    so the grid's winner is checked on the grid, the final origin against the parabola through it.
    The log-likelihood by hand: the profile −(J/2)·log(1 − ρ²), or J·ρ_s·ρ / (1 − ρ_s²) with ρ_s the CCC by hand
    of the candidate angle nearest the prior's pose at the prior's (sub-pixel) origin."""
    rng = np.random.default_rng(4)
    n, box = 4, 48
    fvol, unit, _, _ = noisy_unit(module_map, n, rng, noise_sd=5.0)
    prior_pose = unit.matrices @ rotations.from_rotation_vector(rng.normal(0, np.deg2rad(3), (n, 3)))
    prior_origin = unit.origin_px + rng.normal(0, 1.5, (n, 2))
    unit = local.UnitInput(unit.images_ft, unit.matrices, unit.origin_px, None, None, unit.seeds, prior_pose, prior_origin)
    s = dataclasses.replace(settings("simultaneous", 1.0, 0.5, refinement="none"), likelihood=likelihood)
    grid = candidates.direction_grid(np.deg2rad(2))
    found = local.UnitSearch(fvol, grid, s, box).run(unit)
    shifts = score.shift_grid(3, 1)
    band = fourier.band_grid(box, box // 2 - 1)  # the search's band when none is given
    mask_y, mask_x = np.nonzero(s.mask)
    zx, zy = mask_x - box // 2, mask_y - box // 2
    # the likelihood's J: the mask's pixels × the band's share of the box's Fourier coefficients (its degrees of freedom)
    effective = len(zx) * fourier.half_axis_multiplicity(box)[band.kx.astype(int)].sum() / box**2
    for i in range(n):
        ids = local.unit_directions(grid, unit.matrices[i : i + 1], s.cone_half_angle_rad)
        frames = local.canonical_frames(grid[ids])
        cands = local.particle_candidates(unit.matrices[i], grid[ids], frames, s)
        centred = fourier.shift_images_ft(band.unpack(unit.images_ft[i].reshape(-1)[band.index])[None], -unit.origin_px[i : i + 1])[0]
        padded = np.zeros((2 * box, box + 1), complex)  # ×2 upsampling by zero padding
        padded[: box // 2, : box // 2 + 1] = centred[: box // 2]
        padded[-box // 2 :, : box // 2 + 1] = centred[box // 2 :]
        fine = np.fft.fftshift(np.fft.irfft2(padded, s=(2 * box, 2 * box))) * 4
        refs = fourier.to_real(band.unpack(fourier.project_band(fvol, frames[cands.direction_ids], band)), box)[:, mask_y, mask_x]

        def by_hand(u):
            """{(m, k): (log-posterior, ρ, pose)} of every candidate angle at the image-frame shift u."""
            out = {}
            for k in range(len(cands.direction_ids)):
                for m in cands.m[k]:
                    beta = m * s.psi_step_rad
                    c, sn = np.cos(beta), np.sin(beta)
                    x, y = c * zx + sn * zy - u[0], -sn * zx + c * zy - u[1]
                    patch = ndimage.map_coordinates(fine, [2 * y + box, 2 * x + box], order=1, mode="constant")
                    a, b = patch - patch.mean(), refs[k] - refs[k].mean()
                    rho = (a @ b) / np.sqrt((a @ a) * (b @ b))
                    pose = rotations.inplane_rotation(beta) @ frames[cands.direction_ids[k]]
                    value = (log_likelihood(rho)
                             - 0.5 * (rotations.geodesic_angle(pose, prior_pose[i]) / s.prior_sigma_rad) ** 2
                             - 0.5 * (np.linalg.norm(unit.origin_px[i] + u - prior_origin[i]) / s.prior_sigma_px) ** 2)
                    out[(m, k)] = (value, rho, pose)
            return out

        if likelihood == "profile":
            log_likelihood = lambda rho: score.log_likelihood(rho, effective)
            slope = lambda rho: score.log_likelihood_slope(rho, effective)
        else:
            log_likelihood = lambda rho: 0.0
            at_centre = by_hand(prior_origin[i] - unit.origin_px[i])
            rho_s = min(at_centre.values(), key=lambda v: rotations.geodesic_angle(v[2], prior_pose[i]))[1]
            assert found.scores[i].rho_centre == pytest.approx(rho_s, abs=2e-4)
            log_likelihood = lambda rho: effective * rho_s * rho / (1 - rho_s**2)
            slope = lambda rho: effective * rho_s / (1 - rho_s**2)
        tables = [by_hand(u) for u in shifts]
        kept = found.scores[i]
        for j, table in enumerate(tables):  # the cube the search kept is the landscape by hand
            for (m, k), (_, rho, _) in table.items():
                assert kept.rho[int(np.nonzero(kept.ms == m)[0][0]), k, j] == pytest.approx(rho, abs=2e-4)
        j, (m, k) = max(((j, key) for j, table in enumerate(tables) for key in table), key=lambda jk: tables[jk[0]][jk[1]][0])
        # its shift: the parabola through the winner's row of scores, with the prior's pull
        row = np.array([table[(m, k)][1] for table in tables])
        weight = score.prior_weight(slope(row[j]), s.prior_sigma_px, 1)
        shift = score.subpixel_peak(row[None], shifts, best=np.array([j]), prior_weight=weight,
                                    prior_centre_px=(prior_origin[i] - unit.origin_px[i])[None])[0]
        np.testing.assert_allclose(found.origin_px[i], unit.origin_px[i] + shift, atol=2e-3)
        # its pose: the best angle at that shift
        at_shift = by_hand(shift)
        best = max(at_shift, key=lambda key: at_shift[key][0])
        assert np.rad2deg(rotations.geodesic_angle(found.matrix[i], at_shift[best][2])) < 1e-3


def test_at_low_snr_the_prior_brings_the_poses_closer_to_the_truth(module_map):
    fvol, unit, truth, o_true = noisy_unit(module_map, 24, np.random.default_rng(6), noise_sd=6.0)
    grid = candidates.direction_grid(np.deg2rad(2))
    errors = {}
    for name, prior in (("flat", (None, None)), ("prior", (8 / 3, 1.0))):
        found = local.UnitSearch(fvol, grid, settings("separate", *prior), 48).run(unit)
        errors[name] = (np.median(np.rad2deg(rotations.geodesic_angle(found.matrix, truth))),
                        np.median(np.linalg.norm(found.origin_px - o_true, axis=1)))
    print(errors)
    assert errors["prior"][0] < 0.8 * errors["flat"][0]
    assert errors["prior"][1] < 1.2 * errors["flat"][1]


def test_a_non_candidate_never_outranks_a_candidate_of_negative_score():
    """−inf marks (angle, direction) pairs outside a direction's ψ range; with the prior's log-likelihood they stay
    −inf, below candidates whose every ρ is negative (clipped to ρ = 0, which alone would tie them)."""
    frames = local.canonical_frames(np.array([[0.0, 0.0, 1.0], [0.0, np.sin(0.02), np.cos(0.02)]]))
    ms, shifts = np.array([-1, 0, 1]), np.zeros((1, 2))
    posterior = local.Posterior(settings("simultaneous", 5.0, 1.0), 500.0, local.ParticlePrior(frames[0], np.zeros(2)), frames, ms, shifts)
    cube = np.full((3, 2, 1), -0.2, dtype=np.float32)
    cube[1, 0] = -np.inf  # the pose nearest the prior's centre is not a candidate
    scores = posterior.of_cube(cube)
    assert np.isneginf(scores[1, 0, 0])
    assert np.unravel_index(np.argmax(scores), scores.shape)[:2] != (1, 0)
