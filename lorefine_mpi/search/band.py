"""The Fourier band the search's score uses: where the data still match the reference (pure arrays).

At the start of each stage, the images of a sample of particles are compared, ring by ring, with the
target module's projections at their preliminary poses (with their CTFs): the Fourier ring correlation

    FRC(r) = Σ Re(X · conj(M)) / sqrt(Σ |X|² · Σ |M|²)      (sums over the sample and over the ring)

estimates how much of the image's power in ring r is signal the reference predicts. Per particle and
pixel, the spectral signal-to-noise ratio is ``SSNR = FRC² / (1 − FRC²)`` (0 where the FRC is not above
three standard deviations of pure noise, 3 / sqrt(samples in the ring)). A pose's Fisher information
grows with each ring's pixels × SSNR × r² (an angular error moves a pixel at radius r by r times it), so
the band is the smallest radius holding ``1 − INFORMATION_LOSS`` of the information summed to Nyquist:
beyond it, the rings cost computing time and add nothing the score can use. A blurred first reference
(the consensus) gives a low band, a sharp one a high band; a set with little signal, the band where it ends.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.projection import fourier

INFORMATION_LOSS = 0.01
MIN_BAND_PX = 8.0


def rings(box: int) -> np.ndarray:
    """(N, N//2+1) int: the rounded frequency radius of every pixel of the rfft2 layout."""
    kx, ky = fourier.image_frequencies(box)
    return np.rint(np.hypot(kx, ky)).astype(np.int64)


def ring_sums(values, box: int) -> np.ndarray:
    """Σ over images and over each ring (radius 0 … N/2) of (…, N, N//2+1) real values, the half
    spectrum counted with its mirror (`fourier.half_axis_multiplicity`): (N//2+1,) float64."""
    return _rings_of(np.asarray(values, dtype=np.float64).reshape(-1, box, box // 2 + 1).sum(axis=0), box)


def _rings_of(total, box: int) -> np.ndarray:
    """Σ over each ring of a (N, N//2+1) float64 sum over images, counted with its mirror (`ring_sums`)."""
    radius = rings(box)
    weight = np.broadcast_to(fourier.half_axis_multiplicity(box), radius.shape)
    return np.bincount(radius.ravel(), (total * weight).ravel(), minlength=box // 2 + 1)[: box // 2 + 1]


def ring_totals(images_ft, references_ft, box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`ring_sums` of Re X·M̄, |X|² and |M|² over images and references (both (n, N, N//2+1) spectra): (N//2+1,) each.
    Summed image by image into one double-precision total per pixel (`add_pixel_totals`), the order of numpy's sum
    over the images' axis (so the same numbers as `ring_sums` of the whole products), without the products of every
    image at once (at box 256 and 1,000 images each was 260–530 MB)."""
    return rings_of_totals(add_pixel_totals(pixel_totals(box), images_ft, references_ft))


def pixel_totals(box: int) -> np.ndarray:
    """An empty running total (3, N, N//2+1) float64 of Re X·M̄, |X|² and |M|² per pixel (`add_pixel_totals`)."""
    return np.zeros((3, box, box // 2 + 1))


def add_pixel_totals(totals, images_ft, references_ft) -> np.ndarray:
    """Add images and references (both (n, N, N//2+1) spectra) to ``totals`` (`pixel_totals`) image by image, in
    order: the images given in consecutive parts make the same totals bit for bit as all at once. Returns totals."""
    box = totals.shape[1]
    x, m = np.asarray(images_ft), np.asarray(references_ft)
    for xi, mi in zip(x.reshape(-1, box, box // 2 + 1), m.reshape(-1, box, box // 2 + 1)):
        totals[0] += (xi * np.conj(mi)).real
        totals[1] += np.abs(xi) ** 2
        totals[2] += np.abs(mi) ** 2
    return totals


def rings_of_totals(totals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ring sums (`ring_sums`) of a running total (`add_pixel_totals`): (cross, power X, power M), (N//2+1,) each."""
    box = totals.shape[1]
    return tuple(_rings_of(total, box) for total in totals)


def fourier_ring_correlation(images_ft, references_ft, box: int) -> tuple[np.ndarray, np.ndarray]:
    """FRC (N//2+1,) of images against references (both (n, N, N//2+1) spectra), and the number of
    (complex) samples behind each ring (N//2+1,)."""
    return frc_of(ring_totals(images_ft, references_ft, box), len(images_ft), box)


def frc_of(totals, n_images: int, box: int) -> tuple[np.ndarray, np.ndarray]:
    """`fourier_ring_correlation` from the images' and references' `ring_totals` and the number of images."""
    cross, power_x, power_m = totals
    power = power_x * power_m
    samples = n_images * ring_sums(np.ones((box, box // 2 + 1)), box)
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where(power > 0, cross / np.sqrt(power), 0.0)
    return frc, samples


GAP_RINGS = 3  # the signal ends at the first ring after which this many rings in a row are not significant


def spectral_snr(frc, samples) -> np.ndarray:
    """Per-pixel SSNR of each ring from its FRC, 0 where the FRC is not significant (3 σ of noise) and from the end of
    the signal on: the first run of `GAP_RINGS` insignificant rings. (A ring of pure noise passes 3 σ about once in
    700; beyond the signal one such ring, weighted by its r² · pixels, would otherwise pull the band far out.)"""
    significant = frc > 3.0 / np.sqrt(np.maximum(samples, 1.0))
    run = np.convolve(~significant, np.ones(GAP_RINGS, dtype=int), mode="valid") == GAP_RINGS  # run[r]: rings r … r+2 all not
    ended = np.flatnonzero(run[1:])  # a gap after the DC ring
    if len(ended):
        significant[ended[0] + 1 :] = False
    r = np.clip(frc, 0.0, 0.999)
    return np.where(significant, r * r / (1.0 - r * r), 0.0)


def signal_band(frc, samples, box: int, information_loss: float = INFORMATION_LOSS) -> float:
    """The band radius (image px) holding all but ``information_loss`` of the pose information; between
    `MIN_BAND_PX` and N/2 − 1 (the search's working grid needs one ring of margin below Nyquist)."""
    radius = np.arange(len(frc), dtype=np.float64)
    pixels = ring_sums(np.ones((box, box // 2 + 1)), box)
    information = pixels * radius**2 * spectral_snr(frc, samples)
    top = box // 2 - 1
    if information.sum() <= 0:
        return float(top)
    cumulative = np.cumsum(information) / information.sum()
    band = float(np.searchsorted(cumulative, 1.0 - information_loss) + 1)
    return float(np.clip(band, min(MIN_BAND_PX, top), top))


def band_from_resolution(resolution_angstrom: float, pixel_size_angstrom: float, box: int) -> float:
    """The band radius (image px) of a resolution: N · pixel size / resolution, at most N/2 − 1."""
    return float(min(box * pixel_size_angstrom / resolution_angstrom, box // 2 - 1))


def whitening_weights(images_ft, references_ft, box: int) -> np.ndarray:
    """A factor per frequency radius (N//2+1,) that makes the images' noise white: 1 / sqrt(the noise power
    per Fourier coefficient of each ring), scaled to a largest value of 1.

    The noise power of ring r is what the images hold beyond the part the references predict, the
    least-squares fit ``α(r) · M`` per ring: ``(Σ|X|² − (Σ Re X·M̄)² / Σ|M|²) / samples``. White noise gives
    equal weights (the score is unchanged); a camera's MTF or a coloured background gives the rings where
    the noise is weak more weight, as the likelihood of coloured Gaussian noise does.
    """
    return whitening_of(ring_totals(images_ft, references_ft, box), len(images_ft), box)


def whitening_of(totals, n_images: int, box: int) -> np.ndarray:
    """`whitening_weights` from the images' and references' `ring_totals` and the number of images."""
    cross, power_x, power_m = totals
    samples = n_images * ring_sums(np.ones((box, box // 2 + 1)), box)
    with np.errstate(invalid="ignore", divide="ignore"):
        explained = np.where(power_m > 0, cross**2 / power_m, 0.0)
        noise = (power_x - explained) / np.maximum(samples, 1.0)
    good = noise > 0
    if not good.any():
        return np.ones(box // 2 + 1)
    radius = np.arange(box // 2 + 1)
    noise = np.interp(radius, radius[good], noise[good])  # a ring without an estimate takes its neighbours'
    weights = 1.0 / np.sqrt(noise)
    return weights / weights.max()
