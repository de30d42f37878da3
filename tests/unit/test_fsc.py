"""FSC against a per-shell loop oracle, and the resolution read-out on hand-computed curves."""

import numpy as np
import pytest

from lorefine_mpi.validation import fsc


def fsc_oracle(a, b):
    """Per-voxel loop over the full FFT: Σ A B* / sqrt(Σ|A|² Σ|B|²) in shells round(|k|)."""
    n = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    num, pa, pb = np.zeros(n), np.zeros(n), np.zeros(n)
    k = np.fft.fftfreq(n) * n
    for i in range(n):
        for j in range(n):
            for m in range(n):
                s = int(np.rint(np.sqrt(k[i] ** 2 + k[j] ** 2 + k[m] ** 2)))
                num[s] += (fa[i, j, m] * np.conj(fb[i, j, m])).real
                pa[s] += abs(fa[i, j, m]) ** 2
                pb[s] += abs(fb[i, j, m]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / np.sqrt(pa * pb))[: n // 2 + 1]


def test_fsc_matches_loop_oracle():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12, 12))
    b = a + rng.normal(size=a.shape) * 0.8
    np.testing.assert_allclose(fsc.fsc(a, b, 2.0).fsc, fsc_oracle(a, b), atol=1e-10)


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


def test_masked_fsc_corrects_for_the_mask():
    rng = np.random.default_rng(3)
    n = 32
    signal = np.fft.irfftn(np.fft.rfftn(rng.normal(size=(n, n, n))) * np.exp(-np.arange(n // 2 + 1) / 6.0)[None, None, :], s=(n, n, n), axes=(0, 1, 2))
    a, b = signal + rng.normal(size=signal.shape) * 0.05, signal + rng.normal(size=signal.shape) * 0.05
    r = np.arange(n) - n // 2
    mask = (np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) < 10).astype(float)
    result = fsc.fsc(a, b, 1.0, mask=mask)
    assert result.randomise_from_shell is not None and result.fsc_phase_randomised is not None
    start = result.randomise_from_shell
    if start < len(result.fsc):
        assert np.all(result.fsc[start:] <= np.maximum(result.fsc_unmasked[start:], 0) + 0.2)
