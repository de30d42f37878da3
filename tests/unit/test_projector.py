"""Fourier projector and CTF against RELION's relion_project, a real-space line-integral oracle, and adjointness."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.star import read_star
from lorefine_mpi.projection import ctf, fourier
from lorefine_mpi.reconstruction.backproject import BackProjector

DATA = Path(__file__).resolve().parents[1] / "data"


def relion_rows(name):
    table = read_star(DATA / f"{name}.star")
    with mrcfile.open(DATA / f"{name}.mrcs") as stack:
        images = np.asarray(stack.data, dtype=np.float64)[table.image_index]
    return table, table.matrices, images


@pytest.fixture(scope="module")
def phantom():
    with mrcfile.open(DATA / "phantom_whole.mrc") as m:
        return fourier.prepare_volume(np.asarray(m.data), 2)


def correlations(a, b):
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_projections_match_relion_project_without_ctf(phantom):
    table, matrices, images = relion_rows("proj_noctf")
    ours = fourier.to_real(fourier.project(phantom, matrices, table.origin_px), 48)
    cc = correlations(ours, images)
    assert len(cc) == 24 and cc.min() >= 0.99, cc.min()
    np.testing.assert_allclose(ours.std(axis=(1, 2)), images.std(axis=(1, 2)), rtol=0.02)  # same scale too


def test_projections_match_relion_project_with_ctf(phantom):
    table, matrices, images = relion_rows("proj_ctf")
    c = ctf.ctf_for_table(table, np.arange(len(table)), 48)
    cc = correlations(fourier.to_real(fourier.project(phantom, matrices, table.origin_px, ctf=c), 48), images)
    assert len(cc) == 24 and cc.min() >= 0.999, cc.min()
    # the astigmatism angle's sign is pinned: the mirrored angle fits visibly worse
    flipped = ctf.ctf_for_table(table, np.arange(len(table)), 48, extra_angle_rad=-2 * table.defocus_angle_rad)
    assert correlations(fourier.to_real(fourier.project(phantom, matrices, table.origin_px, ctf=flipped), 48), images).min() < 0.995


def line_integral(volume, matrix, origin_px):
    """Slow oracle: sample V(Aᵀ (x + o, z)) along every ray and sum over z."""
    n = volume.shape[0]
    c = n // 2
    z, y, x = np.meshgrid(np.arange(n) - c, np.arange(n) - c, np.arange(n) - c, indexing="ij")
    lab = np.stack([x + origin_px[0], y + origin_px[1], z], -1).astype(float)
    vol = lab @ matrix  # rows: Aᵀ p for each lab point p
    coords = np.stack([vol[..., 2] + c, vol[..., 1] + c, vol[..., 0] + c])
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant").sum(axis=0)


@pytest.mark.parametrize("box", [32, 48])
def test_projector_matches_real_space_line_integrals(box):
    rng = np.random.default_rng(box)
    n = box
    r = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    volume = np.zeros((n, n, n))
    for centre, width in zip(rng.uniform(-n / 5, n / 5, (6, 3)), rng.uniform(1.5, 3.0, 6)):
        volume += np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2) / (2 * width**2))
    fvol = fourier.prepare_volume(volume, 2)
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 4)))
    origins = rng.uniform(-3, 3, (4, 2))
    ours = fourier.to_real(fourier.project(fvol, matrices, origins), n)
    oracle = np.array([line_integral(volume, m, o) for m, o in zip(matrices, origins)])
    assert correlations(ours, oracle).min() >= 0.99


def test_slice_gather_and_scatter_are_adjoint():
    """⟨P v, u⟩ = ⟨v, Pᵀ u⟩ for the Fourier slice operator (trilinear gather vs BackProjector's scatter)."""
    rng = np.random.default_rng(2)
    box, pad = 16, 2
    shape = fourier.band_shape(box, pad)
    v = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    matrices = rotations.euler_to_matrix(*rng.uniform(-np.pi, np.pi, (3, 5)))
    pv = fourier.project(fourier.FourierVolume.from_array(v, box, pad), matrices)
    u = rng.normal(size=pv.shape) + 1j * rng.normal(size=pv.shape)
    bp = BackProjector(box, pad)
    bp.insert(u, matrices)
    lhs = np.vdot(u, pv).real  # Σ conj(u) P v
    rhs = np.vdot(bp.band(bp.data), v).real  # Σ conj(Pᵀ u) v
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_odd_boxes_are_refused():
    with pytest.raises(InputError, match="even"):
        fourier.prepare_volume(np.zeros((15, 15, 15)))
    with pytest.raises(InputError, match="even"):
        BackProjector(15)


def test_ctf_matches_the_formula_pixel_by_pixel():
    box, apix = 16, 2.0
    got = ctf.ctf_2d(box, apix, 15000.0, 12000.0, 0.5, 200.0, 2.0, 0.07, 0.1, 50.0)[0]
    lam = 12.2643247 / np.sqrt(200e3 * (1 + 200e3 * 0.978466e-6))
    for iy in range(box):
        for ix in range(box // 2 + 1):
            kx, ky = ix / (box * apix), (iy if iy < box // 2 else iy - box) / (box * apix)
            k2 = kx * kx + ky * ky
            df = 13500 + 1500 * np.cos(2 * (np.arctan2(ky, kx) - 0.5))
            chi = -np.pi * lam * df * k2 + np.pi / 2 * 2.0e7 * lam**3 * k2**2 - 0.1 - np.arctan(0.07 / np.sqrt(1 - 0.07**2))
            assert got[iy, ix] == pytest.approx(-np.sin(chi) * np.exp(-50 * k2 / 4), abs=1e-5)


@pytest.mark.parametrize("box", [64, 96])
def test_the_ctf_at_selected_pixels_is_the_whole_grids_bit_for_bit(box):
    """The search asks for the CTF at its band's pixels only (`ctf_2d(..., pixels=)`): the same numbers as the whole
    grid's at those pixels, for several particles with astigmatism, phase shift and B-factor."""
    rng = np.random.default_rng(box)
    n = 3
    args = (box, 1.4, rng.uniform(8000, 25000, n), rng.uniform(8000, 25000, n), rng.uniform(-3, 3, n), 300.0, 2.7, 0.1,
            rng.uniform(0, 1, n), np.array([0.0, 30.0, 80.0]), np.array([1.0, 0.9, 1.1]))
    whole = ctf.ctf_2d(*args)
    pixels = np.sort(rng.choice(box * (box // 2 + 1), size=box * 7, replace=False))
    selected = ctf.ctf_2d(*args, pixels=pixels)
    assert selected.shape == (n, len(pixels)) and selected.dtype == np.float32
    assert np.array_equal(selected, whole.reshape(n, -1)[:, pixels])


@pytest.mark.parametrize("chunk_bytes", [None, 6000])  # the default (one slab here), or slabs of a few kx and rows
@pytest.mark.parametrize("box,padding,radius", [(16, 2, None), (20, 2, 6.5), (12, 3, None)])  # padded 32, 40, 36
def test_the_reference_band_is_the_padded_cubes_3d_fft_bit_for_bit(box, padding, radius, chunk_bytes, monkeypatch):
    """prepare_volume's band (a plane at a time, only the rows that hold the volume, a slab of kx at a time) against the
    direct way: the pre-corrected volume zero-padded into a P³ cube in FFT order, scipy's 3D rfftn, each band voxel read
    by its index."""
    import scipy.fft

    if chunk_bytes is not None:
        monkeypatch.setattr(fourier, "AXIS0_CHUNK_BYTES", chunk_bytes)

    v = np.random.default_rng(box).normal(size=(box, box, box)).astype(np.float32)
    p = padding * box
    correction = (np.sinc((np.arange(box) - box // 2) / p) ** 2).astype(np.float32)
    cube = np.zeros((p, p, p), np.float32)
    place = (np.arange(box) - box // 2) % p
    cube[np.ix_(place, place, place)] = v / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
    spectrum = scipy.fft.rfftn(cube)
    band = fourier.prepare_volume(v, padding, radius_px=radius).data
    r = (band.shape[0] - 1) // 2
    expected = np.zeros_like(band)
    for kz in range(-r, r + 1):
        for ky in range(-r, r + 1):
            for kx in range(r + 1):
                if max(abs(kz), abs(ky), kx) <= p // 2 and kz != p // 2 and ky != p // 2:
                    expected[kz + r, ky + r, kx] = spectrum[kz % p, ky % p, kx]
    np.testing.assert_array_equal(band, expected)
