"""`validation.postprocess` against RELION 3.1's relion_postprocess on the same half maps and mask (skipped
without it): the unmasked and masked FSC curves are RELION's to float precision; the corrected resolution is
within one Fourier shell; the B-factor, fitted from 10 Å to the resolution, is RELION's with the same range
(--autob_highres at that resolution) within 5 %, and with RELION's own default range (to where the FSC weighting
ends) within 20 % (the phase-randomised curve is one random draw on each side, so those can differ by its noise).
benchmarks/vs_relion_postprocess.py prints more cases (docs/relion.md)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star
from lorefine_mpi.projection.source import ParticleSource
from lorefine_mpi.reconstruction.reconstruct import backproject_halves, maps_from_halves
from lorefine_mpi.validation import fsc as fsc_mod
from lorefine_mpi.validation import postprocess as pp

DATA = Path(__file__).resolve().parents[1] / "data"

pytestmark = pytest.mark.skipif(shutil.which("relion_postprocess") is None, reason="RELION is not installed")


def relion_postprocess(folder, voxel, *extra):
    """Run relion_postprocess on folder/h1.mrc, h2.mrc, mask.mrc; returns (general {label: value}, fsc columns)."""
    (folder / "relion").mkdir(exist_ok=True)
    subprocess.run(["relion_postprocess", "--i", "h1.mrc", "--i2", "h2.mrc", "--mask", "mask.mrc", "--angpix", str(voxel),
                    "--auto_bfac", "--o", "relion/pp", *extra], cwd=folder, capture_output=True, text=True, timeout=300)
    star = folder / "relion" / "pp.star"
    assert star.exists(), "relion_postprocess wrote no STAR file"
    general, columns, rows, block = {}, [], [], None
    for line in star.read_text().splitlines():
        text = line.strip()
        if text.startswith("data_"):
            block = text
        elif block == "data_general" and text.startswith("_rln"):
            general[text.split()[0]] = float(text.split()[1]) if text.split()[1][0] in "-0123456789" else text.split()[1]
        elif block == "data_fsc" and text.startswith("_rln"):
            columns.append(text.split()[0])
        elif block == "data_fsc" and text and text[0] in "-0123456789":
            rows.append([float(v) for v in text.split()])
    table = np.array(rows)
    return general, {c: table[:, i] for i, c in enumerate(columns)}


def write_inputs(folder, h1, h2, mask, voxel):
    for name, volume in (("h1.mrc", h1), ("h2.mrc", h2), ("mask.mrc", mask)):
        mrc.write_map(folder / name, volume, voxel)
    return [mrc.read_map(folder / name)[0] for name in ("h1.mrc", "h2.mrc", "mask.mrc")]


def compare(folder, voxel, randomise_from=None):
    extra = ["--randomize_at_A", str(randomise_from)] if randomise_from else []
    general, curves = relion_postprocess(folder, voxel, *extra)
    h1, h2, mask = (mrc.read_map(folder / n)[0] for n in ("h1.mrc", "h2.mrc", "mask.mrc"))
    ours = pp.postprocess(h1, h2, mask, voxel, randomise_from_angstrom=randomise_from)
    np.testing.assert_allclose(ours.fsc.fsc_unmasked, curves["_rlnFourierShellCorrelationUnmaskedMaps"], atol=1e-5)
    np.testing.assert_allclose(ours.fsc.fsc_masked, curves["_rlnFourierShellCorrelationMaskedMaps"], atol=1e-5)
    n = h1.shape[0]
    relion_shell = round(n * voxel / general["_rlnFinalResolution"])
    assert abs(ours.resolution_shell - relion_shell) <= 1, (ours.resolution_angstrom, general["_rlnFinalResolution"])
    assert ours.bfactor_source == "auto" and ours.guinier.fit_points >= pp.MIN_FIT_SHELLS
    same_range, _ = relion_postprocess(folder, voxel, *extra, "--autob_highres", f"{ours.resolution_angstrom:.6f}")
    assert ours.bfactor_angstrom2 == pytest.approx(same_range["_rlnBfactorUsedForSharpening"], rel=0.05)
    relion_default = pp.postprocess(h1, h2, mask, voxel, randomise_from_angstrom=randomise_from, fit_highres_angstrom=0.0)
    assert relion_default.bfactor_angstrom2 == pytest.approx(general["_rlnBfactorUsedForSharpening"], rel=0.2)
    return ours, general


def test_noise_free_halves_of_the_relion_fixture_match(tmp_path):
    """recon_ctf split by rlnRandomSubset; noise-free, so the unmasked FSC never drops below 0.8 and both
    programs are told where to randomise the phases."""
    table = read_star(DATA / "recon_ctf.star")
    maps = maps_from_halves(backproject_halves(ParticleSource(table, 48, True), np.arange(len(table))))
    mask, voxel = mrc.read_map(DATA / "phantom_mask_module_1.mrc")
    write_inputs(tmp_path, maps["half1"], maps["half2"], mask, voxel)
    ours, general = compare(tmp_path, voxel, randomise_from=20.0)
    assert ours.resolution_angstrom == pytest.approx(general["_rlnFinalResolution"], abs=1e-3)


def test_noisy_halves_match(tmp_path):
    """The phantom blurred by B = 150 Å² at 2 Å/px, independent noise in each half, the small module's mask."""
    whole, _ = mrc.read_map(DATA / "phantom_whole.mrc")
    mask, _ = mrc.read_map(DATA / "phantom_mask_module_2.mrc")
    n, voxel = whole.shape[0], 2.0
    s2 = fsc_mod.frequency_radius_sq(n) / (n * voxel) ** 2
    structure = np.fft.irfftn(np.fft.rfftn(whole) * np.exp(-150.0 * s2 / 4), s=whole.shape, axes=(0, 1, 2))
    rng = np.random.default_rng(0)
    sd = structure.std()
    write_inputs(tmp_path, structure + rng.normal(size=whole.shape) * sd, structure + rng.normal(size=whole.shape) * sd, mask, voxel)
    ours, _ = compare(tmp_path, voxel)
    assert 2 * voxel < ours.resolution_angstrom < 10.0 and ours.fsc.randomise_from_shell is not None
