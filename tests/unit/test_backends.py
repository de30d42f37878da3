"""The CPU back-end (numba kernels, scipy.fft, BLAS) against the numpy reference back-end, kernel by kernel: they agree
to float32 rounding on boxes of two sizes. (The reference is plain numpy: fancy indexing, np.add.at, numpy.fft.)"""

import numpy as np
import pytest

from lorefine_mpi.geometry import rotations
from lorefine_mpi.kernels import BACKENDS, backend, use_backend
from lorefine_mpi.kernels.cpu import BACKEND as CPU
from lorefine_mpi.kernels.reference import BACKEND as NUMPY
from lorefine_mpi.projection import fourier

BOXES = (32, 48)


def close(a, b, rtol=2e-5):
    """Equal to float32 rounding, relative to the largest magnitude."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(float(np.abs(b).max()), 1e-30)
    assert float(np.abs(a - b).max()) <= rtol * scale


@pytest.fixture(params=BOXES)
def box(request):
    return request.param


def random_volume(box, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(box, box, box)).astype(np.float32)


def poses(n, seed=1):
    rng = np.random.default_rng(seed)
    return rotations.euler_to_matrix(rng.uniform(-np.pi, np.pi, n), rng.uniform(0, np.pi, n), rng.uniform(-np.pi, np.pi, n))


def test_the_registry_names_both_and_cpu_is_the_default():
    assert set(BACKENDS) == {"cpu", "numpy"}
    assert backend().name == "cpu"
    assert use_backend("numpy") is NUMPY and backend() is NUMPY
    assert use_backend("cpu") is CPU and backend() is CPU


def test_ffts(box):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(3, box, box)).astype(np.float32)
    close(CPU.rfft2(images), NUMPY.rfft2(images))
    spectra = CPU.rfft2(images)
    close(CPU.irfft2(spectra, (box, box)), NUMPY.irfft2(spectra, (box, box)))
    volume = random_volume(box)
    close(CPU.rfftn(volume), NUMPY.rfftn(volume))
    close(CPU.irfftn(CPU.rfftn(volume), volume.shape), NUMPY.irfftn(NUMPY.rfftn(volume), volume.shape))
    assert [CPU.fast_size(n) for n in (box - 1, 97, 121)] == [NUMPY.fast_size(n) for n in (box - 1, 97, 121)]


@pytest.mark.parametrize("radius_fraction", [0.5, 0.3])
def test_gather_slices(box, radius_fraction):
    fvol = fourier.prepare_volume(random_volume(box), 2, radius_px=box * radius_fraction)
    grid = fourier.band_grid(box, fvol.radius_px)
    a = poses(7)
    close(CPU.gather_slices(fvol.data, grid.kx, grid.ky, a, 2), NUMPY.gather_slices(fvol.data, grid.kx, grid.ky, a, 2))


@pytest.mark.parametrize("steps", [(0.0, 0.0), (2.0**-30, 2.0**-40)])
def test_scatter_slices(box, steps):
    shape = fourier.band_shape(box, 2)
    grid = fourier.band_grid(box)
    rng = np.random.default_rng(3)
    values = (rng.normal(size=(5, len(grid.kx))) + 1j * rng.normal(size=(5, len(grid.kx)))).astype(np.complex64)
    weights = rng.uniform(0, 1, (5, len(grid.kx)))
    out = []
    for b in (CPU, NUMPY):
        data, weight = np.zeros(shape, np.complex128), np.zeros(shape)
        b.scatter_slices(data, weight, grid.kx, grid.ky, poses(5, 4), 2, values, weights, steps)
        out.append((data, weight))
    close(out[0][0], out[1][0], 1e-12)
    close(out[0][1], out[1][1], 1e-12)


def upsampled_image(box, seed=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2 * box, 2 * box)).astype(np.float32)


def mask_coordinates(box):
    axis = np.arange(box) - box // 2
    y, x = np.meshgrid(axis, axis, indexing="ij")
    inside = x**2 + y**2 <= (box / 3) ** 2
    return x[inside].astype(np.float64), y[inside].astype(np.float64)


def test_sample_patches(box):
    image = upsampled_image(box)
    zx, zy = mask_coordinates(box)
    rng = np.random.default_rng(6)
    angles, shifts = rng.uniform(-0.3, 0.3, 9), rng.uniform(-3, 3, (9, 2))
    close(CPU.sample_patches(image, zx, zy, angles, shifts, factor=2), NUMPY.sample_patches(image, zx, zy, angles, shifts, factor=2))


def test_sample_shift_grid(box):
    image = upsampled_image(box)
    zx, zy = mask_coordinates(box)
    steps = np.array([(x, y) for y in (-6, 0, 6) for x in (-4, 0, 4)])
    angles = np.array([-0.1, 0.0, 0.2])
    got, want = CPU.sample_shift_grid(image, zx, zy, angles, steps, 2.0), NUMPY.sample_shift_grid(image, zx, zy, angles, steps, 2.0)
    for a, b in zip(got, want):
        close(a, b)


def test_a_units_scores(box):
    """grid_scores, candidate_cubes and point_scores (shared code over each back-end's sampling and products)."""
    zx, zy = mask_coordinates(box)
    rng = np.random.default_rng(7)
    images = [upsampled_image(box, s) for s in (8, 9)]
    templates = [CPU.normalise_rows(rng.normal(size=(k, len(zx)))) for k in (4, 6)]
    angles = [np.array([-0.05, 0.0, 0.05]), np.array([0.1, 0.15])]
    steps = np.array([(x, y) for y in (-2, 0, 2) for x in (-2, 0, 2)])
    for a, b in zip(CPU.grid_scores(images, [None, None], zx, zy, angles, steps, 2.0, templates),
                    NUMPY.grid_scores(images, [None, None], zx, zy, angles, steps, 2.0, templates)):
        close(a, b, 1e-4)
    runs = [np.array([[0, 2], [1, 4], [2, 4]]), np.array([[0, 3], [3, 6]])]
    for a, b in zip(CPU.candidate_cubes(images, zx, zy, angles, steps, 2.0, templates, runs),
                    NUMPY.candidate_cubes(images, zx, zy, angles, steps, 2.0, templates, runs)):
        finite = np.isfinite(b)
        assert np.array_equal(np.isfinite(a), finite)
        close(a[finite], b[finite], 1e-4)
    shifts = [rng.uniform(-1, 1, (3, 2)), rng.uniform(-1, 1, (2, 2))]
    rests = [upsampled_image(box, 10), None]
    for a, b in zip(CPU.point_scores(images, rests, zx, zy, angles, shifts, 2.0, templates),
                    NUMPY.point_scores(images, rests, zx, zy, angles, shifts, 2.0, templates)):
        close(a, b, 1e-4)


def test_the_reference_gather_is_the_central_slice_of_a_direct_fourier_sum():
    """The reference back-end's gather against the obvious: the 3D DFT of a small volume evaluated at the slice's
    frequencies (no padding, no interpolation: exact where the slice passes through grid points, at pose identity)."""
    box = 16
    volume = random_volume(box, 11)
    fvol = fourier.prepare_volume(volume, 1)
    grid = fourier.band_grid(box)
    got = NUMPY.gather_slices(fvol.data, grid.kx, grid.ky, np.eye(3)[None], 1)[0]
    axis = np.arange(box) - box // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    correction = np.sinc(axis / box) ** 2  # `fourier.prepare_volume` pre-divides the trilinear kernel's sinc²
    corrected = volume / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
    want = np.array([(corrected * np.exp(-2j * np.pi * (kx * x + ky * y) / box)).sum() for kx, ky in zip(grid.kx, grid.ky)])
    close(got, want, 1e-4)
