"""The weighting of the weighted back-projection (RELION's iterative gridding), against direct sums."""

import numpy as np
import pytest
from scipy.special import i0

from lorefine_mpi.reconstruction import backproject
from lorefine_mpi.reconstruction.backproject import BackProjector


def blob_transform_by_quadrature(w):
    """The 3D Fourier transform of the radial blob b(r) = I0(α sqrt(1 − (r/a)²)) / I0(α), r ≤ a, by
    numerical integration: 4π ∫ b(r) r² sin(2π w r) / (2π w r) dr."""
    a, alpha = backproject.BLOB_RADIUS_VOXELS, backproject.BLOB_ALPHA
    r = np.linspace(0.0, a, 20001)
    b = i0(alpha * np.sqrt(np.clip(1 - (r / a) ** 2, 0, None))) / i0(alpha)
    return np.array([np.trapezoid(4 * np.pi * b * r * r * np.sinc(2 * wi * r), r) for wi in np.atleast_1d(w)])


def test_blob_fourier_transform_is_the_transform_of_the_blob():
    w = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.45])  # 2π a w passes α = 15 at w ≈ 0.63: test both sides with a wider range
    w = np.concatenate([w, [0.7, 0.9]])
    closed = backproject.blob_fourier_transform(w)
    numeric = blob_transform_by_quadrature(w)
    np.testing.assert_allclose(closed / closed[0], numeric / numeric[0], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("p", [16, 24])
def test_blob_multiplier_is_relions_table_of_the_transform(p):
    m = backproject.blob_multiplier(p)
    step = 0.5 / backproject.BLOB_TABLE_SIZE
    rng = np.random.default_rng(p)
    for z, y, x in rng.integers(0, p, (40, 3)):
        r = np.sqrt(sum((c if c < p // 2 else c - p) ** 2 for c in (z, y, x))) / p
        expected = 0.0 if r >= 0.5 else (backproject.blob_fourier_transform(int(r / step) * step) / backproject.blob_fourier_transform(0.0))
        assert m[z, y, x] == pytest.approx(float(expected), rel=1e-6, abs=1e-7)
    assert m[0, 0, 0] == 1.0 and m[p // 2, p // 2, p // 2] == 0.0  # the centre and a corner of the cube


def test_gridding_weights_invert_a_uniform_weight():
    bp = BackProjector(8, padding=2)
    weight = np.full((16, 16, 9), 2.5)  # the padded FFT layout (P, P, P//2+1) the weighting works in
    np.testing.assert_allclose(bp._weighting(weight, 1e-3, 10), 1 / 2.5, rtol=1e-6)
    np.testing.assert_allclose(bp._weighting(weight, 1e-3, 0), 1 / 2.5, rtol=1e-12)


def test_gridding_weights_spread_an_isolated_sample():
    """One sample alone (away from the kx = 0 plane): plain division gives it 1/w; one gridding iteration
    divides by what the blob convolution leaves on it (its own share and its mirror's tail)."""
    bp = BackProjector(8, padding=2)
    weight = np.zeros((16, 16, 9))
    weight[3, 5, 2] = 4.0
    # the sample and its Hermitian mirror on the full complex grid, convolved with the blob by the convolution theorem
    full = np.zeros((16, 16, 16))
    full[3, 5, 2] = full[-3, -5, -2] = 1.0
    blob_centre_share = np.fft.fftn(np.fft.ifftn(full) * backproject.blob_multiplier(16))[3, 5, 2].real
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
    config allows 50) do not overflow there, and the maps converge: each step of iterations changes the map
    less than the one before (noise images, the hardest case: every frequency sampled sparsely)."""
    from lorefine_mpi.geometry import rotations
    from lorefine_mpi.projection import fourier

    rng = np.random.default_rng(3)
    box, n = 16, 40
    images = fourier.to_fourier(rng.normal(size=(n, box, box)).astype(np.float32))
    matrices = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    bp = BackProjector(box, 2)
    bp.insert(images, matrices)
    plain, default, more, many = (bp.reconstruct(gridding_iterations=i) for i in (0, 10, 20, 50))
    assert np.isfinite(many).all()
    corr = [np.corrcoef(m.ravel(), many.ravel())[0, 1] for m in (plain, default, more)]
    assert corr[0] < corr[1] < corr[2] and corr[1] > 0.95


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


def noise_backprojector(box: int, n: int = 30) -> BackProjector:
    """A BackProjector holding n noise images at random poses with a CTF (every frequency sampled, sparsely)."""
    from lorefine_mpi.geometry import rotations
    from lorefine_mpi.projection import ctf as ctf_model
    from lorefine_mpi.projection import fourier

    rng = np.random.default_rng(box)
    images = fourier.to_fourier(rng.normal(size=(n, box, box)).astype(np.float32))
    matrices = rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), np.arccos(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n))
    c = ctf_model.ctf_2d(box, 3.0, rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n), 0.3, 300, 2.7, 0.1)
    bp = BackProjector(box, 2)
    bp.insert(images, matrices, c)
    return bp


def weighting_by_whole_volume_ffts(weight, weight_floor, iterations):
    """RELION's iterative gridding written the direct way: 3D FFTs of whole volumes and the multiplier as a cube."""
    import scipy.fft

    p = weight.shape[0]
    multiplier = backproject.blob_multiplier(p)
    factors = (weight > 0).astype(np.float32)
    for _ in range(iterations):
        real = scipy.fft.irfftn((weight * factors).astype(np.complex64), s=(p, p, p))
        spread = np.abs(scipy.fft.rfftn(real * multiplier))
        spread = np.maximum(spread, np.float32(weight_floor * spread.max()))
        factors = np.where(weight > 0, factors / spread, factors).astype(np.float32)
    return factors


@pytest.mark.parametrize("box", [12, 16, 20])  # padded sizes 24 and 40 (not powers of two) and 32
def test_the_plane_at_a_time_gridding_gives_the_whole_volume_ffts_numbers(box):
    """The weighting and the inversion a plane at a time (no padded real volume, no second spectrum) make the same
    numbers as whole-volume 3D FFTs, bit for bit; and a reconstruction in the accumulators' own memory (``consume``)
    the same map as one that keeps them."""
    import scipy.fft

    from lorefine_mpi.projection import fourier

    bp = noise_backprojector(box)
    p = 2 * box
    shape = (p, p, p // 2 + 1)
    weight = bp._fft_layout(bp.weight, np.empty(shape, np.float32))
    factors = bp._weighting(weight, 1e-3, 3)
    np.testing.assert_array_equal(factors, weighting_by_whole_volume_ffts(weight, 1e-3, 3))
    data = bp._fft_layout(bp.data, np.empty(shape, np.complex64)) * factors
    padded = scipy.fft.irfftn(data, s=(p, p, p))
    expected = np.empty((box, box, box), np.float32)
    for fft_order, centred in fourier.centred_blocks(box, p):
        expected[centred] = padded[fft_order]
    np.testing.assert_array_equal(backproject._centred_inverse(data.copy(), box), expected)
    kept = bp.reconstruct()
    assert np.array_equal(bp.reconstruct(consume=True), kept)
    bp.clear()
    assert not bp.data.any() and not bp.weight.any() and bp.data.dtype == np.complex128


def test_insertion_in_parts_adds_the_same_terms(monkeypatch):
    """A batch inserted a few images per scatter call (`INSERT_SAMPLES`, the bound on its work arrays) gives the
    accumulators of one call: bit for bit on an exact-sum grid, to rounding without one."""
    from lorefine_mpi.geometry import rotations
    from lorefine_mpi.projection import fourier

    rng = np.random.default_rng(8)
    box, n = 16, 12
    images = fourier.to_fourier(rng.normal(size=(n, box, box)).astype(np.float32))
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, n)))
    shifts, weights = rng.normal(0, 2, (n, 2)), rng.uniform(0.1, 1, n)
    for steps, exact in (((2.0**-30, 2.0**-36), True), ((0.0, 0.0), False)):
        whole, parts = BackProjector(box, 2, steps), BackProjector(box, 2, steps)
        whole.insert(images, matrices, shifts_px=shifts, weights=weights)
        monkeypatch.setattr(backproject, "INSERT_SAMPLES", 5 * len(fourier.band_grid(box).kx))  # 5 images a call: 3 calls
        parts.insert(images, matrices, shifts_px=shifts, weights=weights)
        monkeypatch.undo()
        for a, b in ((whole.data, parts.data), (whole.weight, parts.weight)):
            if exact:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(a).max())
