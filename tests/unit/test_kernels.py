"""The compiled kernels (lorefine_mpi.kernels) against slow, obviously correct versions."""

import numpy as np
import pytest
from scipy import ndimage

from lorefine_mpi.geometry import rotations
from lorefine_mpi.kernels import backend
from lorefine_mpi.projection import fourier


def trilinear_oracle(data, point):
    """The band-layout volume at a padded-grid point (kx, ky, kz) by hand: Hermitian read for kx < 0,
    eight corners weighted by the distances."""
    x, y, z = point
    conj = x < 0
    if conj:
        x, y, z = -x, -y, -z
    r = (data.shape[0] - 1) // 2
    y, z = y + r, z + r
    x0, y0, z0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
    total = 0j
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy)) * (1 - abs(z - z0 - dz))
                total += w * data[z0 + dz, y0 + dy, x0 + dx]
    return np.conj(total) if conj else total


@pytest.mark.parametrize("box,radius", [(16, None), (24, 6.5)])
def test_gather_matches_trilinear_interpolation_by_hand(box, radius):
    rng = np.random.default_rng(box)
    shape = fourier.band_shape(box, 2, radius)
    data = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    grid = fourier.band_grid(box, radius)
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 3)))
    got = backend().gather_slices(data, grid.kx, grid.ky, matrices, 2)
    for i, a in enumerate(matrices):
        for j in rng.choice(len(grid.kx), 40, replace=False):
            point = 2 * (grid.kx[j] * a[0] + grid.ky[j] * a[1])
            assert got[i, j] == pytest.approx(trilinear_oracle(data, point), abs=1e-4)


def test_scatter_is_the_adjoint_of_gather_with_weights():
    rng = np.random.default_rng(1)
    box = 16
    shape = fourier.band_shape(box, 2)
    v = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    grid = fourier.band_grid(box)
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 4)))
    u = rng.normal(size=(4, len(grid.kx))) + 1j * rng.normal(size=(4, len(grid.kx)))
    w = rng.uniform(0, 1, u.shape)
    data, weight = np.zeros(shape, np.complex128), np.zeros(shape)
    backend().scatter_slices(data, weight, grid.kx, grid.ky, matrices, 2, u, w)
    pv = backend().gather_slices(v, grid.kx, grid.ky, matrices, 2)
    assert np.vdot(u, pv).real == pytest.approx(np.vdot(data, v).real, rel=1e-5)
    # the weights go through the same trilinear spread: Σ weight = Σ w
    assert weight.sum() == pytest.approx(w.sum(), rel=1e-12)


@pytest.mark.parametrize("box", [16, 22])
def test_patches_match_bilinear_interpolation_by_scipy(box):
    rng = np.random.default_rng(box)
    up = rng.normal(size=(2 * box, 2 * box)).astype(np.float32)
    zy, zx = np.nonzero(np.ones((7, 9), bool))
    zx, zy = (zx - 4).astype(float), (zy - 3).astype(float)
    angles = rng.uniform(-np.pi, np.pi, 5)
    shifts = rng.uniform(-3, 3, (5, 2))
    got = backend().sample_patches(up, zx, zy, angles, shifts)
    for q in range(5):
        c, s = np.cos(angles[q]), np.sin(angles[q])
        x = c * zx + s * zy - shifts[q, 0]
        y = -s * zx + c * zy - shifts[q, 1]
        expected = ndimage.map_coordinates(up.astype(np.float64), [2 * y + box, 2 * x + box], order=1, mode="constant")
        np.testing.assert_allclose(got[q], expected, atol=1e-5)


@pytest.mark.parametrize("box, factor", [(16, 2.0), (22, 1.9393939)])
def test_shift_grid_patches_are_the_turned_and_shifted_samples_with_their_moments(box, factor):
    """Every (angle, whole fine-pixel shift) pair of `sample_shift_grid` equals `sample_patches` of that pair,
    including samples that fall off the image (0), and the row sums are the patches' Σ and Σ²."""
    rng = np.random.default_rng(box)
    size = 2 * box
    up = rng.normal(size=(size, size)).astype(np.float32)
    zy, zx = np.nonzero(np.ones((9, 11), bool))
    zx, zy = (zx - 5).astype(float), (zy - 4).astype(float)
    angles = rng.uniform(-np.pi, np.pi, 4)
    steps = np.array([[0, 0], [1, 0], [0, -1], [-3, 2], [box, 1], [2, -box]])  # the last two leave the image
    got, sums, squares = backend().sample_shift_grid(up, zx, zy, angles, steps, factor)
    expected = np.zeros_like(got, dtype=np.float64)
    for t, beta in enumerate(angles):  # bilinear by hand, 0 where a corner is off the image
        c, s = np.cos(beta), np.sin(beta)
        for k, (sx, sy) in enumerate(steps):
            x = factor * (c * zx + s * zy) + size // 2 - sx
            y = factor * (-s * zx + c * zy) + size // 2 - sy
            x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
            inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < size) & (y0 + 1 < size)
            for j in np.nonzero(inside)[0]:
                fx, fy = x[j] - x0[j], y[j] - y0[j]
                corners = up[y0[j] : y0[j] + 2, x0[j] : x0[j] + 2].astype(np.float64)
                expected[t * len(steps) + k, j] = ((1 - fy) * ((1 - fx) * corners[0, 0] + fx * corners[0, 1])
                                                   + fy * ((1 - fx) * corners[1, 0] + fx * corners[1, 1]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # off the shift grid the general kernel gives the same samples
    general = backend().sample_patches(up, zx, zy, np.repeat(angles, len(steps)), np.tile(steps, (4, 1)) / factor, factor=factor)
    assert np.mean(np.abs(general - got) < 1e-5) > 0.99
    assert (got[4] == 0).any() and (got[5] == 0).any()
    np.testing.assert_allclose(sums, got.astype(np.float64).sum(axis=1), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(squares, (got.astype(np.float64) ** 2).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("box,padding", [(16, 2), (22, 2), (64, 2), (24, 3)])
def test_the_ball_layout_holds_every_corner_of_every_sample(box, padding):
    """Every trilinear corner of every frequency of the box, at any pose (and the poses that put samples on the axes),
    lies inside its row of the ball layout: the kernel writes without bounds checks."""
    rows = fourier.sphere_rows(box, padding)
    r = rows.half_width
    grid = fourier.band_grid(box)
    rng = np.random.default_rng(box)
    matrices = np.concatenate([rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 40))),
                               rotations.euler_to_matrix(*(np.array([0.0, np.pi / 2, np.pi]).repeat(3).reshape(3, 3)))])
    for m in matrices:
        point = padding * (grid.kx[:, None] * m[0] + grid.ky[:, None] * m[1])  # (M, 3) x, y, z
        point[point[:, 0] < 0] *= -1  # read at −k conjugated
        x0 = np.floor(point[:, 0]).astype(int)
        y0, z0 = (np.floor(point[:, c] + r).astype(int) for c in (1, 2))
        for dz in (0, 1):
            for dy in (0, 1):
                assert (x0 + 1 < rows.lengths[z0 + dz, y0 + dy]).all()
    # and it is about half the band layout's box
    assert 0.5 < rows.size / np.prod(fourier.band_shape(box, padding)) < 0.56


def test_scatter_into_the_ball_layout_is_scatter_into_the_band_layout():
    """The same samples scattered into the ball layout and into the band layout: the same sums, bit for bit, where
    the ball has rows; nothing beyond them in the band."""
    rng = np.random.default_rng(4)
    box = 20
    grid = fourier.band_grid(box)
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 6)))
    values = rng.normal(size=(6, len(grid.kx))) + 1j * rng.normal(size=(6, len(grid.kx)))
    weights = rng.uniform(0, 1, values.shape)
    shape = fourier.band_shape(box, 2)
    band, band_w = np.zeros(shape, np.complex128), np.zeros(shape)
    backend().scatter_slices(band, band_w, grid.kx, grid.ky, matrices, 2, values, weights)
    rows = fourier.sphere_rows(box, 2)
    ball, ball_w = np.zeros(rows.size, np.complex128), np.zeros(rows.size)
    backend().scatter_slices(ball, ball_w, grid.kx, grid.ky, matrices, 2, values, weights, rows=rows)
    x = np.arange(shape[2])
    inside = x[None, None, :] < rows.lengths[:, :, None]
    np.testing.assert_array_equal(band[inside], ball)
    np.testing.assert_array_equal(band_w[inside], ball_w)
    assert not band[~inside].any() and not band_w[~inside].any()
