"""STAR 3.0/3.1 reading into internal units, and round trips that keep every column and value."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from lorefine_mpi.errors import InputError
from lorefine_mpi.io.star import read_star, relative_image_names, write_star

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.star")))
def test_round_trip_keeps_every_column_and_value(tmp_path, name):
    table = read_star(DATA / name)
    write_star(tmp_path / name, table)
    back = read_star(tmp_path / name)
    assert back.columns == table.columns
    assert back.rows == table.rows
    assert back.optics_columns == table.optics_columns and back.optics_rows == table.optics_rows


def test_new_poses_survive_write_and_read(tmp_path):
    table = read_star(DATA / "proj_ctf.star")
    rng = np.random.default_rng(0)
    rot, tilt, psi = rng.uniform(-3, 3, len(table)), rng.uniform(0, 3, len(table)), rng.uniform(-3, 3, len(table))
    origin = rng.normal(size=(len(table), 2))
    write_star(tmp_path / "x.star", table, rot_rad=rot, tilt_rad=tilt, psi_rad=psi, origin_px=origin)
    back = read_star(tmp_path / "x.star")
    for got, want in ((back.rot_rad, rot), (back.tilt_rad, tilt), (back.psi_rad, psi), (back.origin_px, origin)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(back.defocus_u_angstrom, table.defocus_u_angstrom)


STAR30 = """
data_images

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginX #5
_rlnOriginY #6
_rlnDetectorPixelSize #7
_rlnMagnification #8
_rlnVoltage #9
_rlnDefocusU #10
_rlnDefocusV #11
_rlnDefocusAngle #12
_rlnMicrographName #13
000001@stack.mrcs 10.0 20.0 30.0 1.5 -2.0 14.0 35000 300 10000 9000 45 "mic 1.mrc"
000002@stack.mrcs -10.0 90.0 -30.0 0.0 3.25 14.0 35000 300 12000 11000 0 mic2.mrc
"""


def write_stack(path, n=2, box=16, voxel=4.0):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((n, box, box), np.float32))
        m.voxel_size = voxel


def test_star30_reads_into_internal_units(tmp_path):
    (tmp_path / "a.star").write_text(STAR30)
    write_stack(tmp_path / "stack.mrcs")
    t = read_star(tmp_path / "a.star")
    assert len(t) == 2 and t.has_ctf
    np.testing.assert_allclose(t.origin_px, [[1.5, -2.0], [0.0, 3.25]])
    np.testing.assert_allclose(np.rad2deg(t.rot_rad), [10, -10])
    assert t.optics[1].pixel_size_angstrom == pytest.approx(4.0)
    np.testing.assert_allclose(np.rad2deg(t.defocus_angle_rad), [45, 0])
    assert t.stack_path[0] == str((tmp_path / "stack.mrcs").resolve()) and t.image_index.tolist() == [0, 1]
    write_star(tmp_path / "b.star", t)
    b = read_star(tmp_path / "b.star")
    np.testing.assert_allclose(b.origin_px, t.origin_px, atol=1e-6)
    assert "rlnOriginXAngst" in b.columns and "rlnOriginX" not in b.columns
    assert b.rows[0][b.columns.index("rlnMicrographName")] == "mic 1.mrc"
    # the 3.1 optics table carries the real image size and pixel size; the 3.0 per-particle optics columns moved there
    optics = dict(zip(b.optics_columns, b.optics_rows[0]))
    assert optics["rlnImageSize"] == "16" and float(optics["rlnImagePixelSize"]) == pytest.approx(4.0)
    assert float(optics["rlnVoltage"]) == 300 and b.optics[1].image_size_px == 16
    assert not {"rlnVoltage", "rlnDetectorPixelSize", "rlnMagnification"} & set(b.columns)


def test_image_names_resolve_against_the_project_directory_first(tmp_path, monkeypatch):
    """RELION opens rlnImageName from its working directory (the project); beside the STAR file is the fallback."""
    project, job = tmp_path / "project", tmp_path / "project" / "Refine3D" / "job010"
    (project / "Extract" / "job005").mkdir(parents=True)
    job.mkdir(parents=True)
    write_stack(project / "Extract" / "job005" / "stack.mrcs")
    (job / "run_data.star").write_text(STAR30.replace("@stack.mrcs", "@Extract/job005/stack.mrcs"))
    t = read_star(job / "run_data.star", project_dir=project)
    assert t.stack_path[0] == str(project / "Extract" / "job005" / "stack.mrcs") and t.project_dir == str(project)
    monkeypatch.chdir(project)  # the default project directory is the current one
    assert read_star("Refine3D/job010/run_data.star").stack_path[0] == t.stack_path[0]
    (job / "Extract" / "job005").mkdir(parents=True)
    write_stack(job / "Extract" / "job005" / "stack.mrcs")
    assert read_star(job / "run_data.star", project_dir=project).stack_path[0] == t.stack_path[0]  # both exist: the project's
    assert read_star(job / "run_data.star", project_dir=tmp_path).stack_path[0] == str(job / "Extract" / "job005" / "stack.mrcs")
    names = relative_image_names(t, project)
    assert names[0] == "000001@Extract/job005/stack.mrcs"
    assert relative_image_names(t, job)[1] == "000002@../../Extract/job005/stack.mrcs"


STAR31_TWO_GROUPS = """
data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImageSize #7
g1 1 1.0 300 2.7 0.1 64
g2 2 2.0 200 2.0 0.07 64

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnOpticsGroup #7
_rlnCustomColumn #8
000001@s1.mrcs 0 0 0 4.0 -4.0 1 keepme
000001@s2.mrcs 0 0 0 4.0 -4.0 2 andme
"""


def test_star31_optics_groups_have_their_own_pixel_size(tmp_path):
    (tmp_path / "a.star").write_text(STAR31_TWO_GROUPS)
    t = read_star(tmp_path / "a.star")
    np.testing.assert_allclose(t.origin_px, [[4.0, -4.0], [2.0, -2.0]])
    assert t.optics[2].voltage_kv == 200 and t.optics[2].amplitude_contrast == pytest.approx(0.07)
    assert len(set(t.stack_path)) == 2
    write_star(tmp_path / "b.star", t, origin_px=t.origin_px)
    b = read_star(tmp_path / "b.star")
    assert [r[-1] for r in b.rows] == ["keepme", "andme"]
    np.testing.assert_allclose(b.origin_px, t.origin_px)


@pytest.mark.parametrize("text,fragment", [
    ("data_particles\nloop_\n_rlnImageName #1\n_rlnAngleRot #2\n", "empty"),
    ("data_particles\nloop_\n_rlnImageName #1\n000001@s.mrcs\n", "_rlnAngleRot"),
    ("garbage\n", "data_"),
])
def test_bad_star_files_are_one_line_input_errors(tmp_path, text, fragment):
    (tmp_path / "x.star").write_text(text)
    with pytest.raises(InputError) as error:
        read_star(tmp_path / "x.star")
    assert fragment in str(error.value) and "\n" not in str(error.value)
