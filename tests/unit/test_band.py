"""The search's band: the FRC of images against references, and the radius holding the pose information."""

import numpy as np
import pytest

from lorefine_mpi.config.schema import checked_value
from lorefine_mpi.errors import InputError
from lorefine_mpi.projection import fourier
from lorefine_mpi.search import band


def test_ring_sums_count_every_pixel_of_the_full_spectrum_once():
    for box in (16, 24):
        counts = band.ring_sums(np.ones((box, box // 2 + 1)), box)
        radius = np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(box) * box, np.fft.fftfreq(box) * box))).astype(int)
        expected = np.bincount(radius.ravel(), minlength=box)[: box // 2 + 1]
        np.testing.assert_allclose(counts, expected)


def test_frc_of_signal_plus_noise_gives_its_spectral_snr():
    """Images = reference + white noise whose power is 4 × the reference's below radius 10 and infinitely
    more above (no signal): the FRC is 1/sqrt(1 + 4) below, noise-level above, and SSNR ≈ 1/4 below, 0 above."""
    rng = np.random.default_rng(0)
    box, n = 32, 400
    kx, ky = fourier.image_frequencies(box)
    inside = np.hypot(kx, ky) <= 10
    reference = (rng.normal(size=(n, box, box // 2 + 1)) + 1j * rng.normal(size=(n, box, box // 2 + 1))) * inside
    noise = 2 * (rng.normal(size=reference.shape) + 1j * rng.normal(size=reference.shape))
    frc, samples = band.fourier_ring_correlation(reference + noise, reference, box)
    assert np.all(np.abs(frc[2:10] - 1 / np.sqrt(5)) < 0.03)
    ssnr = band.spectral_snr(frc, samples)
    assert np.all(np.abs(ssnr[2:10] - 0.25) < 0.05)
    assert np.all(ssnr[12:] == 0)


def test_the_band_holds_the_information_and_no_more():
    box = 64
    radius = np.arange(box // 2 + 1)
    samples = np.full(len(radius), 1e6)
    sharp = np.where(radius <= 20, 0.5, 0.0)  # signal to radius 20, none beyond
    assert 18 <= band.signal_band(sharp, samples, box) <= 21
    assert band.signal_band(np.full(len(radius), 0.5), samples, box) == box // 2 - 1  # signal to Nyquist: everything
    assert band.signal_band(np.zeros(len(radius)), samples, box) == box // 2 - 1  # no information at all: nothing cut
    assert band.signal_band(np.where(radius <= 3, 0.5, 0.0), samples, box) == band.MIN_BAND_PX
    lone = sharp.copy()
    lone[30] = 0.5  # one ring of noise that passes the significance test, far beyond the signal: not signal
    assert 18 <= band.signal_band(lone, samples, box) <= 21
    gappy = np.where((radius <= 20) & (radius != 12), 0.5, 0.0)  # one insignificant ring inside the signal: still signal
    assert 18 <= band.signal_band(gappy, samples, box) <= 21
    assert band.band_from_resolution(8.0, 2.0, 128) == 32.0
    assert band.band_from_resolution(3.0, 2.0, 128) == 63.0


def test_the_max_resolution_key_takes_auto_or_a_resolution():
    assert checked_value("search.max_resolution_angstrom", "auto") == "auto"
    assert checked_value("search.max_resolution_angstrom", 8) == 8.0
    for bad in (-3, 0, "fast", True, None):
        with pytest.raises(InputError, match="search.max_resolution_angstrom: must be auto or a resolution"):
            checked_value("search.max_resolution_angstrom", bad)


@pytest.mark.parametrize("box, n", [(16, 37), (22, 5)])
def test_ring_totals_image_by_image_are_the_sums_of_the_whole_products_bit_for_bit(box, n):
    """`band.ring_totals` (a running total per pixel, image by image) against `band.ring_sums` of the products of every
    image at once (numpy's sum over the images' axis), in single-precision spectra as the search band makes them."""
    rng = np.random.default_rng(box + n)
    shape = (n, box, box // 2 + 1)
    x = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64) * np.float32(10.0) ** rng.uniform(-3, 3, (n, 1, 1))
    m = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    x, m = x.astype(np.complex64), m.astype(np.complex64)
    cross, power_x, power_m = band.ring_totals(x, m, box)
    np.testing.assert_array_equal(cross, band.ring_sums((x * np.conj(m)).real, box))
    np.testing.assert_array_equal(power_x, band.ring_sums(np.abs(x) ** 2, box))
    np.testing.assert_array_equal(power_m, band.ring_sums(np.abs(m) ** 2, box))
