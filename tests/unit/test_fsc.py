"""FSC against a per-coefficient loop oracle (RELION's getFSC), the phase randomisation, the correction,
and the resolution read-outs on hand-computed curves."""

import numpy as np
import pytest

from lorefine_mpi.validation import fsc


def fsc_oracle(a, b):
    """Per-coefficient loop over the stored half spectrum (kx = 0 … N/2), each coefficient once, shells
    round(|k|) ≤ N/2, as RELION's getFSC: Σ Re(A* B) / sqrt(Σ|A|² Σ|B|²)."""
    n = a.shape[0]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    m = n // 2 + 1
    num, pa, pb = np.zeros(m), np.zeros(m), np.zeros(m)
    for i in range(n):
        kz = i if i < m else i - n
        for j in range(n):
            ky = j if j < m else j - n
            for kx in range(m):
                s = int(round(np.sqrt(kx * kx + ky * ky + kz * kz)))
                if s >= m:
                    continue
                num[s] += (np.conj(fa[i, j, kx]) * fb[i, j, kx]).real
                pa[s] += abs(fa[i, j, kx]) ** 2
                pb[s] += abs(fb[i, j, kx]) ** 2
    return num / np.sqrt(pa * pb)


@pytest.mark.parametrize("n", [12, 16])
def test_fsc_matches_loop_oracle(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n, n))
    b = a + rng.normal(size=a.shape) * 0.8
    np.testing.assert_allclose(fsc.fsc(a, b, 2.0).fsc, fsc_oracle(a, b), atol=1e-10)


@pytest.mark.parametrize("n", [16, 24])
def test_phase_randomisation_keeps_everything_inside_the_sphere_and_every_amplitude(n):
    """Coefficients with |k|² < s² are untouched; beyond, amplitudes stay (off the kx = 0 and Nyquist planes,
    where a real map's spectrum must stay Hermitian) and phases are new."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, n, n))
    shell = n // 4
    out = fsc.randomise_phases_beyond(v, shell, np.random.default_rng(1))
    f0, f1 = np.fft.rfftn(v), np.fft.rfftn(out)
    r2 = fsc.frequency_radius_sq(n)
    np.testing.assert_allclose(f1[r2 < shell**2], f0[r2 < shell**2], atol=1e-9)
    beyond = (r2 >= shell**2)
    beyond[:, :, 0] = beyond[:, :, -1] = False
    np.testing.assert_allclose(np.abs(f1[beyond]), np.abs(f0[beyond]), rtol=1e-9)
    assert np.abs(np.angle(f1[beyond] / f0[beyond])).mean() > 1.0  # uniform new phases: mean |Δφ| = π/2


def test_correction_starts_two_shells_after_the_randomisation_as_relion():
    masked = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    randomised = np.array([1.0, 0.9, 0.7, 0.5, 0.2, 0.0])
    corrected = fsc.corrected_fsc(masked, randomised, 2)
    np.testing.assert_allclose(corrected, [1.0, 0.9, 0.8, 0.7, (0.6 - 0.2) / 0.8, 0.5])
    both = fsc.corrected_fsc(np.stack([masked, masked]), np.stack([randomised, randomised]), 2)
    np.testing.assert_allclose(both, [corrected, corrected])


def test_resolution_shell_is_the_last_shell_before_the_first_drop():
    r = fsc.FSCResult(np.array([0.0, 0.1, 0.2, 0.3, 0.4]), np.array([1.0, 0.9, 0.3, 0.1, 0.5]))
    assert fsc.resolution_shell_at(r, 0.143) == (2, pytest.approx(5.0))  # shell 4 rises again: RELION stops at the first drop
    assert fsc.resolution_shell_at(r, 0.5) == (1, pytest.approx(10.0))
    never = fsc.FSCResult(np.array([0.0, 0.1, 0.25]), np.array([1.0, 0.9, 0.8]))
    assert fsc.resolution_shell_at(never, 0.143) == (2, pytest.approx(4.0))


def test_identical_maps_correlate_and_independent_noise_does_not():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(24, 24, 24))
    assert np.allclose(fsc.fsc(a, a, 1.0).fsc[1:], 1.0)
    assert np.abs(fsc.fsc(a, rng.normal(size=a.shape), 1.0).fsc[3:]).max() < 0.2


def test_resolution_interpolates_the_crossing_linearly():
    r = fsc.FSCResult(np.array([0.0, 0.1, 0.2, 0.3]), np.array([1.0, 0.9, 0.3, 0.1]))
    # 0.5 is crossed between 0.1 (0.9) and 0.2 (0.3): at 0.1 + 0.4/0.6 · 0.1 = 0.16667 1/Å → 6.0 Å
    assert fsc.resolution_at(r, 0.5) == pytest.approx(6.0)
    # 0.143 between 0.2 (0.3) and 0.3 (0.1): 0.2 + 0.157/0.2 · 0.1 = 0.2785 → 3.5907 Å
    assert fsc.resolution_at(r, 0.143) == pytest.approx(1 / 0.2785)
    never = fsc.FSCResult(np.array([0.0, 0.1, 0.25]), np.array([1.0, 0.9, 0.8]))
    assert fsc.resolution_at(never, 0.5) == pytest.approx(4.0)  # Nyquist


@pytest.mark.parametrize("n", [32, 48])
def test_masked_fsc_corrects_for_the_mask(n):
    """A signal up to shell N/5 plus independent noise, in a sharp spherical mask: beyond the signal the masked
    FSC is inflated by the mask (the signal's low frequencies leak into higher shells), the corrected FSC is not."""
    rng = np.random.default_rng(3)
    shells = fsc.shell_index(n)
    signal = np.fft.irfftn(np.fft.rfftn(rng.normal(size=(n,) * 3)) * (shells <= n // 5) * 10, s=(n,) * 3, axes=(0, 1, 2))
    a, b = signal + rng.normal(size=signal.shape), signal + rng.normal(size=signal.shape)
    r = np.arange(n) - n // 2
    mask = (np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) < n / 4).astype(float)
    result = fsc.fsc(a, b, 1.0, mask=mask)
    start = result.randomise_from_shell
    assert start == n // 5 + 1  # the first shell without signal: the unmasked FSC drops below 0.8 there
    tail = slice(start + 4, start + 8)
    assert result.fsc_masked[tail].mean() > 0.3
    assert abs(result.fsc[tail]).mean() < 0.1
    np.testing.assert_array_equal(result.fsc[: start + 2], result.fsc_masked[: start + 2])
