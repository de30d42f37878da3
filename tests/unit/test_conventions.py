"""Pin the Euler/origin/centre convention against RELION's own relion_project output.

`blobs_proj.mrcs` holds 16 projections, made by relion_project 3.1.3, of five Gaussian blobs at known
positions. For every image, every blob must be found (sub-pixel, by a joint least-squares fit of five
2D Gaussians, so blobs that overlap in projection do not bias each other) where
`rotations.image_position_px` predicts it, within 0.1 px.
"""

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml
from scipy.optimize import least_squares

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io.star import read_star

DATA = Path(__file__).resolve().parents[1] / "data"


def fit_blobs(image, start_xy_px, sigma_px):
    """Least-squares fit of Σ a_k G(x − p_k) + b to an image; returns fitted (k, 2) positions, px from centre."""
    n = image.shape[0]
    yy, xx = np.mgrid[:n, :n] - n // 2
    k = len(start_xy_px)

    def model(params):
        pos = params[: 2 * k].reshape(k, 2)
        amp, sigma, background = params[2 * k : 3 * k], params[3 * k], params[3 * k + 1]
        d2 = (xx[None] - pos[:, 0, None, None]) ** 2 + (yy[None] - pos[:, 1, None, None]) ** 2
        return (amp[:, None, None] * np.exp(-d2 / (2 * sigma**2))).sum(0) + background

    amp0 = np.full(k, image.max())
    start = np.concatenate([np.ravel(start_xy_px), amp0, [sigma_px, 0.0]])
    fit = least_squares(lambda p: (model(p) - image).ravel(), start)
    return fit.x[: 2 * k].reshape(k, 2)


@pytest.fixture(scope="module")
def blobs_fit():
    """(points, table, matrices, fitted (16, 5, 2)) from the RELION-made projections."""
    blobs = yaml.safe_load((DATA / "blobs.yaml").read_text())
    points = np.array(blobs["blob_positions_xyz_px_from_box_centre"], dtype=float)
    table = read_star(DATA / "blobs_proj.star")
    matrices = table.matrices
    predicted = rotations.image_position_px(matrices, points, table.origin_px)
    with mrcfile.open(DATA / "blobs_proj.mrcs", permissive=True) as stack:
        images = np.asarray(stack.data, dtype=np.float64)
    fitted = []
    for i in range(len(table)):
        # Jitter the start so the fit, not the prediction, decides where the blobs are.
        start = predicted[i] + np.random.default_rng(i).uniform(-0.7, 0.7, predicted[i].shape)
        fitted.append(fit_blobs(images[table.image_index[i]], start, blobs["blob_sigma_px"]))
    return points, table, matrices, np.array(fitted)


def test_every_blob_lands_where_the_convention_predicts(blobs_fit):
    points, table, matrices, fitted = blobs_fit
    assert fitted.shape == (16, 5, 2)
    errors = np.linalg.norm(fitted - rotations.image_position_px(matrices, points, table.origin_px), axis=-1)
    assert errors.max() < 0.1, f"worst blob is {errors.max():.3f} px from its predicted position"


@pytest.mark.parametrize("flip", ["origin sign", "transposed matrix"])
def test_the_fixture_tells_a_wrong_convention_apart(blobs_fit, flip):
    """A flipped origin sign or the inverse rotation puts the blobs pixels away from where RELION drew them."""
    points, table, matrices, fitted = blobs_fit
    if flip == "origin sign":
        wrong = rotations.image_position_px(matrices, points, -table.origin_px)
    else:
        wrong = rotations.image_position_px(np.swapaxes(matrices, -1, -2), points, table.origin_px)
    assert np.median(np.linalg.norm(fitted - wrong, axis=-1)) > 2.0
