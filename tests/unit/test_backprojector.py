"""The weighting of the weighted back-projection (RELION's iterative gridding), against direct sums."""

import numpy as np
from scipy.special import i0

from lorefine_mpi.reconstruction import backproject
from lorefine_mpi.reconstruction.backproject import BackProjector


def direct_blob_convolution(spectrum):
    """Σ_o b(o) F(k − o) over the blob's integer offsets, b normalised to sum 1 (circular)."""
    radius, alpha = backproject.BLOB_RADIUS_VOXELS, backproject.BLOB_ALPHA
    terms, total = np.zeros_like(spectrum), 0.0
    for dz in range(-2, 3):
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                r = np.sqrt(dz * dz + dy * dy + dx * dx)
                if r <= radius:
                    b = i0(alpha * np.sqrt(1 - (r / radius) ** 2)) / i0(alpha)
                    terms += b * np.roll(spectrum, (dz, dy, dx), axis=(0, 1, 2))
                    total += b
    return terms / total


def test_blob_multiplier_convolves_the_spectrum():
    p = 12
    rng = np.random.default_rng(3)
    spectrum = rng.normal(size=(p, p, p)) + 1j * rng.normal(size=(p, p, p))
    fast = np.fft.fftn(np.fft.ifftn(spectrum) * backproject.blob_multiplier(p))
    np.testing.assert_allclose(fast, direct_blob_convolution(spectrum), atol=1e-6)  # the factor is float32


def test_gridding_weights_invert_a_uniform_weight():
    bp = BackProjector(8, padding=2)
    weight = np.full((16, 16, 9), 2.5)  # the padded FFT layout (P, P, P//2+1) the weighting works in
    np.testing.assert_allclose(bp._weighting(weight, 1e-3, 10), 1 / 2.5, rtol=1e-6)
    np.testing.assert_allclose(bp._weighting(weight, 1e-3, 0), 1 / 2.5, rtol=1e-12)


def test_gridding_weights_spread_an_isolated_sample():
    """One sample alone (away from the kx = 0 plane): plain division gives it 1/w; one gridding iteration
    divides by the blob's share that stays on it, w · b(0) / Σ b."""
    bp = BackProjector(8, padding=2)
    weight = np.zeros((16, 16, 9))
    weight[3, 5, 2] = 4.0
    unit = np.zeros((5, 5, 5))
    unit[2, 2, 2] = 1.0
    blob_centre_share = direct_blob_convolution(np.pad(unit, 4))[6, 6, 6]
    assert np.isclose(bp._weighting(weight, 1e-6, 0)[3, 5, 2], 1 / 4.0)
    np.testing.assert_allclose(bp._weighting(weight, 1e-6, 1)[3, 5, 2], 1 / (4.0 * blob_centre_share), rtol=1e-6)
