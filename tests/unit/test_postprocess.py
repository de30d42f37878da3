"""Post-processing against oracles: a map with a known B-factor gives it back from the Guinier plot and is
flattened by the sharpening; the sharpening of one coefficient at a time (a loop) equals the batched one;
RELION's rule that skips a mask the unmasked FSC beats."""

import numpy as np
import pytest

from lorefine_mpi.validation import fsc as fsc_mod
from lorefine_mpi.validation import postprocess as pp


def blurred(n, voxel, bfactor, seed):
    """A white-noise map (flat expected amplitude per shell) multiplied by exp(−B s² / 4) in Fourier space."""
    rng = np.random.default_rng(seed)
    s2 = fsc_mod.frequency_radius_sq(n) / (n * voxel) ** 2
    ft = np.fft.rfftn(rng.normal(size=(n,) * 3)) * np.exp(-bfactor * s2 / 4)
    return np.fft.irfftn(ft, s=(n,) * 3, axes=(0, 1, 2))


def test_fit_bfactor_is_four_times_the_slope_in_the_range():
    s2 = np.linspace(0.001, 0.1, 60)
    y = 3.0 - 50.0 * s2
    y[s2 < 0.01] += 5.0  # outside the 10 Å end: ignored
    b, slope, intercept, corr, points, s2_range = pp.fit_bfactor(s2, y, 10.0, 1 / np.sqrt(0.09))
    assert b == pytest.approx(-200.0) and slope == pytest.approx(-50.0) and intercept == pytest.approx(3.0)
    assert corr == pytest.approx(-1.0) and points == np.sum((s2 >= 0.01 - 1e-12) & (s2 <= 0.09 + 1e-12))
    assert s2_range[0] >= 0.01 - 1e-12 and s2_range[1] <= 0.09 + 1e-12
    assert pp.fit_bfactor(s2, y, 10.0, 9.9)[0] == 0.0  # fewer than two points: no B-factor


@pytest.mark.parametrize("n,voxel", [(32, 1.5), (48, 1.2)])
def test_auto_bfactor_recovers_the_blur_and_sharpening_flattens_the_spectrum(n, voxel):
    structure = blurred(n, voxel, 150.0, seed=n)
    rng = np.random.default_rng(1)
    noise = structure.std() * 0.02
    h1, h2 = structure + rng.normal(size=structure.shape) * noise, structure + rng.normal(size=structure.shape) * noise
    result = pp.postprocess(h1, h2, np.ones_like(h1), voxel)
    assert result.resolution_angstrom == pytest.approx(2 * voxel)  # signal to Nyquist
    assert result.bfactor_angstrom2 == pytest.approx(-150.0, rel=0.05)
    g = result.guinier
    use = (g.s2_inv_angstrom2 >= 1 / 100) & (g.s2_inv_angstrom2 <= 1 / (2.5 * voxel) ** 2)
    flat = np.polyfit(g.s2_inv_angstrom2[use], g.ln_amplitude_sharpened[use], 1)[0]
    assert abs(flat) < 0.05 * abs(g.fit_slope)


def test_too_short_a_fit_is_no_b_factor_and_a_warning():
    """Signal to 8 Å at 3 Å/px, box 32: the shells between 10 Å and the resolution are fewer than
    MIN_FIT_SHELLS, so no B-factor is estimated (none applied) and the result says why."""
    n, voxel = 32, 3.0
    structure = blurred(n, voxel, 800.0, seed=3)
    rng = np.random.default_rng(2)
    sd = structure.std()
    h1, h2 = structure + rng.normal(size=structure.shape) * 0.5 * sd, structure + rng.normal(size=structure.shape) * 0.5 * sd
    result = pp.postprocess(h1, h2, np.ones_like(h1), voxel)
    shells = np.arange(1, n // 2 + 1)
    in_range = np.sum((n * voxel / shells <= 10.0) & (n * voxel / shells >= result.resolution_angstrom - 1e-9))
    assert in_range < pp.MIN_FIT_SHELLS
    assert result.bfactor_source == "not estimated" and result.bfactor_angstrom2 == 0.0 and result.guinier.fit_slope is None
    assert result.guinier.fit_points == in_range
    assert any(w.startswith(f"B-factor not estimated from the data: {in_range} Fourier shell") for w in result.warnings)
    assert result.to_dict()["bfactor_source"] == "not estimated"


def test_sharpening_equals_a_per_coefficient_loop():
    """Weighting by sqrt(2F/(1+F)), B-factor, raised-cosine low-pass, one coefficient at a time (box 12)."""
    n, voxel, b = 12, 2.0, -80.0
    rng = np.random.default_rng(5)
    base = blurred(n, voxel, 60.0, 0)
    h1, h2 = base + rng.normal(size=base.shape) * 0.3 * base.std(), base + rng.normal(size=base.shape) * 0.3 * base.std()
    result = pp.postprocess(h1, h2, np.ones_like(h1), voxel, bfactor=b, lowpass_angstrom=6.0)
    f = result.fsc.fsc
    weights = pp.fsc_weights(f)
    ft = np.fft.rfftn(0.5 * (h1 + h2))
    ires = round(n * voxel / 6.0)
    for i in range(n):
        kz = i if i <= n // 2 else i - n
        for j in range(n):
            ky = j if j <= n // 2 else j - n
            for kx in range(n // 2 + 1):
                r = np.sqrt(kx * kx + ky * ky + kz * kz)
                shell = int(round(r))
                factor = weights[shell] if shell <= n // 2 else 0.0
                factor *= np.exp(-b / 4 * (r / (n * voxel)) ** 2) if r <= n / 2 else 0.0
                if r > ires + 1:
                    factor = 0.0
                elif r >= ires - 1:
                    factor *= 0.5 + 0.5 * np.cos(np.pi * (r - (ires - 1)) / 2)
                ft[i, j, kx] *= factor
    expected = np.fft.irfftn(ft, s=(n,) * 3, axes=(0, 1, 2))
    np.testing.assert_allclose(result.sharpened, expected, atol=1e-5 * np.abs(expected).max())
    assert result.bfactor_source == "given" and result.bfactor_angstrom2 == b


def test_fsc_weights_stop_where_the_fsc_first_drops_below_1e_4():
    w = pp.fsc_weights(np.array([1.0, 0.8, 0.3, -0.1, 0.5]))
    np.testing.assert_allclose(w, [1.0, np.sqrt(1.6 / 1.8), np.sqrt(0.6 / 1.3), 0.0, 0.0])


def test_the_mask_is_skipped_when_the_unmasked_fsc_reaches_further_unless_forced():
    """A mask that cuts the structure away: the masked FSC holds noise only, the unmasked one the signal."""
    n, voxel = 32, 2.0
    rng = np.random.default_rng(2)
    structure = blurred(n, voxel, 0.0, 3)
    r = np.arange(n) - n // 2
    radius = np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    structure *= radius < 6
    mask = ((radius > 10) & (radius < 14)).astype(float)
    h1, h2 = structure + rng.normal(size=structure.shape) * 0.05, structure + rng.normal(size=structure.shape) * 0.05
    skipped = pp.postprocess(h1, h2, mask, voxel)
    assert not skipped.mask_used and "not used" in skipped.warnings[0]
    assert skipped.resolution_angstrom == pytest.approx(fsc_mod.resolution_shell_at(
        fsc_mod.FSCResult(skipped.fsc.spatial_frequency_inv_angstrom, skipped.fsc.fsc_unmasked), 0.143)[1])
    forced = pp.postprocess(h1, h2, mask, voxel, force_mask=True)
    assert forced.mask_used and forced.resolution_angstrom > skipped.resolution_angstrom


def test_lowpass_weights_are_a_raised_cosine_over_two_shells():
    radius = np.array([0.0, 8.9, 9.0, 10.0, 11.0, 11.1])
    w = pp.lowpass_weights(40, 2.0, 8.0, radius)  # ires = round(40 · 2 / 8) = 10
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-12)
