"""`lorefine postprocess` writes what it says and reports what it found; a user's mistake in its inputs (or
in `lorefine report`'s folder) is one line, exit status 2, nothing written."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lorefine_mpi.cli.main import main
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import parse_star

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def lorefine(capsys, monkeypatch):
    """Run the CLI in this process (in folder ``cwd``): (exit status, stdout, stderr)."""
    def call(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return call


@pytest.fixture
def halves(tmp_path):
    whole, voxel = mrc.read_map(DATA / "phantom_whole.mrc")
    rng = np.random.default_rng(0)
    for name in ("h1.mrc", "h2.mrc"):
        mrc.write_map(tmp_path / name, whole + rng.normal(size=whole.shape) * 2 * whole.std(), voxel)
    mask, _ = mrc.read_map(DATA / "phantom_mask_module_1.mrc")
    mrc.write_map(tmp_path / "mask.mrc", mask, voxel)
    return tmp_path


def test_postprocess_writes_maps_plots_json_and_local_resolution(halves, lorefine):
    done = lorefine("postprocess", "--half1", "h1.mrc", "--half2", "h2.mrc", "--mask", "mask.mrc", "--out", "pp", "--locres",
                    "--locres-step", "8", cwd=halves)
    assert done.returncode == 0, done.stderr
    out = halves / "pp"
    for name in ("postprocess.mrc", "postprocess_masked.mrc", "postprocess.json", "postprocess.star", "postprocess_fsc.png", "postprocess_guinier.png",
                 "locres.mrc", "locres.json", "locres_histogram.png", "locres_slices.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "postprocess.json").read_text())
    assert f"{result['resolution_angstrom']:.2f} Å" in done.stdout.splitlines()[0]
    assert f"B-factor: {result['bfactor_angstrom2']:.1f} Å²" in done.stdout
    star = parse_star(out / "postprocess.star")  # relion_postprocess's layout (test_relion_job: RELION reads it)
    general = dict(zip(star["general"][0], star["general"][1][0]))
    assert float(general["rlnFinalResolution"]) == pytest.approx(result["resolution_angstrom"], abs=1e-5)
    assert general["rlnUnfilteredMapHalf1"] == "h1.mrc" and general["rlnMaskName"] == "mask.mrc" and "fsc" in star and "guinier" in star
    sharpened, voxel = mrc.read_map(out / "postprocess.mrc")
    masked, _ = mrc.read_map(out / "postprocess_masked.mrc")
    mask, _ = mrc.read_map(halves / "mask.mrc")
    assert voxel == pytest.approx(4.0) and sharpened.shape == (48, 48, 48)
    np.testing.assert_allclose(masked, sharpened * mask, atol=1e-6)
    local, _ = mrc.read_map(out / "locres.mrc")
    assert local[mask > 0.5].min() >= 2 * voxel - 1e-4  # nothing finer than Nyquist
    given = lorefine("postprocess", "--half1", "h1.mrc", "--half2", "h2.mrc", "--mask", "mask.mrc", "--out", "given", "--bfactor", "-50",
                     cwd=halves)
    assert given.returncode == 0 and json.loads((halves / "given" / "postprocess.json").read_text())["bfactor_angstrom2"] == -50.0


def _box(name, shape):
    def apply(folder):
        volume, voxel = mrc.read_map(folder / name)
        mrc.write_map(folder / name, volume[: shape, : shape, : shape], voxel)
    return apply


def _voxel(folder):
    volume, _ = mrc.read_map(folder / "h2.mrc")
    mrc.write_map(folder / "h2.mrc", volume, 3.0)


def _scale_mask(folder):
    volume, voxel = mrc.read_map(folder / "mask.mrc")
    mrc.write_map(folder / "mask.mrc", volume * 2, voxel)


CASES = {
    "boxes differ": (_box("h2.mrc", 40), [], "h2.mrc: box"),
    "voxel sizes differ": (_voxel, [], "voxel size 3 Å differs"),
    "mask outside [0, 1]": (_scale_mask, [], "mask values must lie in [0, 1]"),
    "odd box": (lambda f: [_box(n, 47)(f) for n in ("h1.mrc", "h2.mrc", "mask.mrc")], [], "odd"),
    "missing half map": (lambda f: (f / "h1.mrc").unlink(), [], "h1.mrc: file not found"),
    "bad B-factor": (lambda f: None, ["--bfactor", "sharp"], "--bfactor: expected auto or a number"),
    "negative fit end": (lambda f: None, ["--autob-highres", "-3"], "--autob-highres: expected a positive number"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_postprocess_input_is_one_line_and_nothing_is_written(halves, case, lorefine):
    breaker, extra, fragment = CASES[case]
    breaker(halves)
    done = lorefine("postprocess", "--half1", "h1.mrc", "--half2", "h2.mrc", "--mask", "mask.mrc", "--out", "pp", *extra, cwd=halves)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr
    assert not (halves / "pp").exists()


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, lorefine):
    done = lorefine("report", tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"lorefine: error: {tmp_path}: no config.yaml; expected a lorefine refine output folder"
    assert not (tmp_path / "report.html").exists()
