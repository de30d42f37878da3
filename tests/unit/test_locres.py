"""Local resolution: the window, the crossing read-out, the batched windows against one window at a time,
a map whose two halves are blurred differently, and the same answer when the centres are split over ranks."""

import numpy as np
import pytest
import scipy.ndimage

from lorefine_mpi.refine.distributor import Distributor, block_of
from lorefine_mpi.validation import fsc as fsc_mod
from lorefine_mpi.validation import locres


def two_blurs(n, voxel, b_left, b_right, seed=0, noise=0.35):
    """Half maps of a white-noise 'structure' whose x < 0 half is blurred by B = b_left and x ≥ 0 half by
    b_right, plus independent noise; and masks of the two halves (away from the boundary)."""
    rng = np.random.default_rng(seed)
    s2 = fsc_mod.frequency_radius_sq(n) / (n * voxel) ** 2
    base = np.fft.rfftn(rng.normal(size=(n,) * 3))
    left = np.fft.irfftn(base * np.exp(-b_left * s2 / 4), s=(n,) * 3, axes=(0, 1, 2))
    right = np.fft.irfftn(base * np.exp(-b_right * s2 / 4), s=(n,) * 3, axes=(0, 1, 2))
    x = np.arange(n) - n // 2
    structure = np.where(x[None, None, :] < 0, left, right)
    sd = noise * structure.std()
    h1, h2 = structure + rng.normal(size=structure.shape) * sd, structure + rng.normal(size=structure.shape) * sd
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    inner = r < n / 2 - 6
    return h1, h2, (inner & (x[None, None, :] < -5)).astype(float), (inner & (x[None, None, :] >= 5)).astype(float)


def test_window_is_flat_then_a_raised_cosine():
    w = locres.window(20, 3.0, 4.0)
    assert w[10, 10, 10] == 1.0 and w[10, 10, 13] == 1.0  # r = 3
    assert w[10, 10, 15] == pytest.approx(0.5)  # r = 5, half-way down the edge
    assert w[10, 10, 17] == 0.0 and w[10, 10, 0] == 0.0


def test_crossing_is_interpolated_between_the_shells_and_capped():
    curves = np.array([[1.0, 0.9, 0.5, 0.1, 0.0], [1.0, 0.9, 0.8, 0.7, 0.6], [1.0, 0.1, 0.0, 0.0, 0.0]])
    res = locres.crossing_angstrom(curves, 8, 2.0, 0.143, lowest=50.0)
    crossing = 2 + (0.5 - 0.143) / 0.4  # shell 2.8925 of a box of 8 px at 2 Å
    np.testing.assert_allclose(res, [16.0 / crossing, 4.0, 16.0 / ((1.0 - 0.143) / 0.9)])
    assert locres.crossing_angstrom(np.array([[1.0, 0.01, 0.0]]), 4, 5.0, lowest=12.0)[0] == 12.0


def test_batched_windows_equal_one_window_at_a_time():
    n, voxel = 32, 2.0
    h1, h2, _, _ = two_blurs(n, voxel, 0.0, 200.0)
    settings = locres.LocresSettings(radius_angstrom=4.0, edge_angstrom=6.0, step_angstrom=8.0)
    rng = np.random.default_rng(0)
    shell = int(n * voxel / settings.randomise_from_angstrom)
    r1, r2 = fsc_mod.randomise_phases_beyond(h1, shell, rng), fsc_mod.randomise_phases_beyond(h2, shell, rng)
    radius, edge, step, d = settings.in_voxels(voxel, n)
    centres = locres.window_centres(n, radius, step)
    batched = locres.centre_resolutions([locres.padded(v, d) for v in (h1, h2, r1, r2)], centres, voxel, settings, n)
    w = locres.window(d, radius, edge)
    shells = fsc_mod.shell_index(d)
    expected = []
    for c in centres:
        boxes = []
        for v in (h1, h2, r1, r2):
            padded = np.pad(v, d // 2)
            boxes.append(np.fft.rfftn(padded[c[0] : c[0] + d, c[1] : c[1] + d, c[2] : c[2] + d] * w))
        true = fsc_mod.fsc_curve(boxes[0], boxes[1], shells, d // 2 + 1)
        noise = fsc_mod.fsc_curve(boxes[2], boxes[3], shells, d // 2 + 1)
        corrected = fsc_mod.corrected_fsc(true, noise, max(1, int(d * voxel / settings.randomise_from_angstrom)))
        expected.append(locres.crossing_angstrom(corrected[None], d, voxel, lowest=settings.lowest_angstrom)[0])
    np.testing.assert_allclose(batched, expected, rtol=1e-4)


@pytest.mark.parametrize("n", [40, 48])
def test_the_blurrier_half_has_the_lower_local_resolution(n):
    voxel = 2.0
    h1, h2, sharp, blurry = two_blurs(n, voxel, 0.0, 500.0, seed=n)
    settings = locres.LocresSettings(radius_angstrom=6.0, edge_angstrom=6.0, step_angstrom=6.0)
    result = locres.local_resolution(Distributor(), h1, h2, voxel, settings)
    sharp_median = np.median(result.map_angstrom[sharp > 0])
    blurry_median = np.median(result.map_angstrom[blurry > 0])
    assert sharp_median < 0.8 * blurry_median, (sharp_median, blurry_median)
    assert sharp_median < 3 * voxel  # near Nyquist (4 Å) where nothing is blurred


class RankOf:
    """The context of one rank of ``size``; reduce_sum adds the other ranks' arrays (run them first) on rank 0."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.is_root, self.shared = rank, size, rank == 0, shared

    def share(self, n):
        return block_of(n, self.size, self.rank)

    def reduce_sum(self, array):
        if self.is_root:
            for other in self.shared:
                array += other
        else:
            self.shared.append(array.copy())

    def bcast(self, obj):
        return obj


def test_split_over_ranks_gives_the_serial_answer():
    n, voxel = 32, 2.0
    h1, h2, sharp, blurry = two_blurs(n, voxel, 0.0, 300.0, seed=4)
    settings = locres.LocresSettings(radius_angstrom=4.0, edge_angstrom=6.0, step_angstrom=6.0)
    serial = locres.local_resolution(Distributor(), h1, h2, voxel, settings, support=sharp + blurry)
    shared = []
    for rank in (2, 1):
        assert locres.local_resolution(RankOf(rank, 3, shared), h1, h2, voxel, settings, support=sharp + blurry) is None
    split = locres.local_resolution(RankOf(0, 3, shared), h1, h2, voxel, settings, support=sharp + blurry)
    np.testing.assert_array_equal(split.resolution_angstrom, serial.resolution_angstrom)
    np.testing.assert_array_equal(split.map_angstrom, serial.map_angstrom)
    assert len(serial.centres_px) < len(locres.window_centres(n, 2.0, 3))  # the support leaves out empty corners


@pytest.mark.parametrize("n, radius, edge", [(16, 1.5, 2.0), (24, 2.0, 3.0), (20, 1.0, 1.5)])
def test_the_map_is_the_window_weighted_mean_of_the_centres(n, radius, edge):
    """`locres.assemble_map` against RELION's definition summed voxel by voxel from the window's formula:
    ``Σ_c w(|x − c|) / Σ_c w(|x − c|) / res_c``, 0 where no window reaches (centres near the faces included)."""
    rng = np.random.default_rng(n)
    d = int(np.ceil(2 * (radius + edge))) + 2
    d += d % 2
    centres = rng.integers(0, n, size=(7, 3))
    centres[0] = (0, n - 1, 2)  # a window cut by the faces
    resolution = rng.uniform(4.0, 20.0, size=len(centres))
    got = locres.assemble_map(n, centres, resolution, radius, edge, d)
    grid = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), -1).astype(np.float64)
    total, frequency = np.zeros((n,) * 3), np.zeros((n,) * 3)
    for c, res in zip(centres, resolution):
        r = np.sqrt(((grid - c) ** 2).sum(-1))
        w = np.where(r <= radius, 1.0, np.where(r >= radius + edge, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - radius) / edge)))
        total += w
        frequency += w / res
    reached = total > 1e-6
    expected = np.zeros((n,) * 3)
    expected[reached] = total[reached] / frequency[reached]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert (got[~reached] == 0).all() and (~reached).any()

@pytest.mark.parametrize("n", [16, 22])
def test_distance_to_the_support_is_the_euclidean_distance_transform(n):
    """`locres.distance_to_support` (a k-d tree of the support's surface) against scipy's distance transform of the box, at
    every voxel, for a support of two blobs, one touching a face."""
    rng = np.random.default_rng(n)
    grid = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), -1)
    inside = (((grid - (n // 3, n // 2, n // 2)) ** 2).sum(-1) < (n / 5) ** 2) | (((grid - (n - 2, 3, n // 2)) ** 2).sum(-1) < 9)
    inside &= rng.random(inside.shape) > 0.1  # holes: inner voxels with outside neighbours
    expected = scipy.ndimage.distance_transform_edt(~inside)
    points = grid.reshape(-1, 3)
    np.testing.assert_array_equal(locres.distance_to_support(inside, points), expected.reshape(-1))
