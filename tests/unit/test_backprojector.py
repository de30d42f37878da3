"""The weighting of the weighted back-projection (RELION's iterative gridding), against direct sums."""

import numpy as np
import pytest
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


def power_beyond_nyquist(volume) -> float:
    """The share of a cube's Fourier power at |k| > N/2 (the corners of its Fourier cube)."""
    n = volume.shape[0]
    spectrum = np.fft.rfftn(np.asarray(volume, dtype=np.float64))
    k = np.fft.fftfreq(n) * n
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2
    weight = np.ones(spectrum.shape)
    weight[..., 1 : (n + 1) // 2] = 2.0  # the half spectrum's mirrored columns
    power = weight * np.abs(spectrum) ** 2
    return float(power[k2 > (n // 2) ** 2].sum() / power.sum())


@pytest.mark.parametrize("box,ctf", [(16, False), (24, True)])
def test_a_reconstruction_holds_nothing_beyond_nyquist(box, ctf):
    """Noise images (all frequencies to the image's corners) at random poses, with or without a CTF: the map
    keeps no power in the corners of its Fourier cube (cropping the padded volume in real space would put
    some there; reconstruct low-passes at Nyquist)."""
    from lorefine_mpi.geometry import rotations
    from lorefine_mpi.projection import ctf as ctf_model
    from lorefine_mpi.projection import fourier

    rng = np.random.default_rng(box)
    n = 60
    images = fourier.to_fourier(rng.normal(size=(n, box, box)).astype(np.float32))
    matrices = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    c = ctf_model.ctf_2d(box, 3.0, rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n), 0.3, 300, 2.7, 0.1) if ctf else None
    bp = BackProjector(box, 2)
    bp.insert(images, matrices, c)
    volume = bp.reconstruct()
    assert power_beyond_nyquist(volume) < 1e-9
    # the oracle itself sees corners: the same volume with its corner frequencies kept
    assert power_beyond_nyquist(rng.normal(size=(box, box, box))) > 0.3


def test_many_gridding_iterations_stay_finite_and_converge():
    """Where nothing was inserted the weighting factor stays 0: more iterations than the default (the
    config allows 50) neither overflow there nor change the map much."""
    from lorefine_mpi.geometry import rotations
    from lorefine_mpi.projection import fourier

    rng = np.random.default_rng(3)
    box, n = 16, 40
    images = fourier.to_fourier(rng.normal(size=(n, box, box)).astype(np.float32))
    matrices = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    bp = BackProjector(box, 2)
    bp.insert(images, matrices)
    default, many = bp.reconstruct(gridding_iterations=10), bp.reconstruct(gridding_iterations=50)
    assert np.isfinite(many).all()
    assert np.corrcoef(default.ravel(), many.ravel())[0, 1] > 0.99


def test_soft_mask_outside_keeps_the_inside_and_fades_to_the_background():
    box = 16
    volume = np.random.default_rng(0).normal(size=(box, box, box)).astype(np.float32)
    masked = backproject.soft_mask_outside(volume, 3.0)
    r1 = np.arange(box) - box // 2
    r = np.sqrt(r1[:, None, None] ** 2 + r1[None, :, None] ** 2 + r1[None, None, :] ** 2)
    np.testing.assert_array_equal(masked[r <= box / 2], volume[r <= box / 2])
    far = masked[r >= box / 2 + 3]
    np.testing.assert_allclose(far, far[0], rtol=1e-6)  # one background value beyond the edge
    assert abs(far[0]) < 0.2  # the mean of noise over the fade
