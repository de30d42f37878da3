"""results.h5 as a checkpoint: what --continue accepts and what it refuses, with the reason."""

import h5py
import pytest

from lorefine_mpi.errors import InputError
from lorefine_mpi.io import results


def _open(path, *, resume, fingerprint=None):
    return results.ResultsFile(path, image_names=["1@a.mrcs", "2@a.mrcs"], config_yaml="seed: 1\n",
                               fingerprint=fingerprint or {"search": {"cone_half_angle_deg": 10.0}, "seed": 1},
                               command_line="lorefine refine c.yaml", version="9.9", resume=resume)


def test_resume_accepts_the_same_settings_and_records_the_format(tmp_path):
    path = tmp_path / "results.h5"
    _open(path, resume=False).close()
    with h5py.File(path, "r") as f:
        assert f.attrs["checkpoint_format"] == results.CHECKPOINT_FORMAT
    _open(path, resume=True).close()
    assert not (tmp_path / ".results.h5.tmp").exists()


def test_resume_refuses_a_checkpoint_of_another_format(tmp_path):
    path = tmp_path / "results.h5"
    _open(path, resume=False).close()
    with h5py.File(path, "r+") as f:  # a file written before the format attribute existed
        del f.attrs["checkpoint_format"]
    with pytest.raises(InputError) as error:
        _open(path, resume=True)
    message = str(error.value)
    assert str(path) in message and "lorefine 9.9" in message and "format 1" in message
    assert f"format {results.CHECKPOINT_FORMAT}" in message and "\n" not in message


def test_resume_names_the_changed_setting(tmp_path):
    path = tmp_path / "results.h5"
    _open(path, resume=False).close()
    with pytest.raises(InputError, match=r"search.cone_half_angle_deg was 10.0, is 4.0"):
        _open(path, resume=True, fingerprint={"search": {"cone_half_angle_deg": 4.0}, "seed": 1})
    with pytest.raises(InputError, match="exists already"):
        _open(path, resume=False)


def test_a_units_results_land_in_its_particles_rows(tmp_path):
    """write_unit writes each field's values at the unit's particles (given in any order), marks them and the unit
    done, and leaves every other row as it was: the same as numpy's assignment, for two stages in turn."""
    import numpy as np

    rng = np.random.default_rng(3)
    n = 40
    file = results.ResultsFile(tmp_path / "results.h5", image_names=[f"{i + 1}@a.mrcs" for i in range(n)], config_yaml="seed: 1\n",
                               fingerprint={"seed": 1}, command_line="lorefine refine c.yaml", version="9.9", resume=False)
    unit_of_particle = rng.integers(0, 6, n)
    expected = {}
    for stage in ("iteration_01/large", "iteration_01/small"):
        file.stage(stage, iteration=1, module=stage.split("/")[1], unit_of_particle=unit_of_particle)
        want = {field: np.zeros((n,) + shape, dtype) for field, (shape, dtype) in results.FIELDS.items()}
        for unit in (4, 1, 3):
            particles = rng.permutation(np.flatnonzero(unit_of_particle == unit))
            values = {field: rng.normal(size=(len(particles),) + shape).astype(dtype) for field, (shape, dtype) in results.FIELDS.items()
                      if field != "status"}
            file.write_unit(stage, unit, particles, values)
            for field, v in values.items():
                want[field][particles] = v
            want["status"][particles] = 1
        expected[stage] = want
    file.close()
    with h5py.File(tmp_path / "results.h5", "r") as f:
        for stage, want in expected.items():
            for field, v in want.items():
                np.testing.assert_array_equal(f[stage][field][...], v, err_msg=f"{stage} {field}")
            np.testing.assert_array_equal(f[stage]["unit_done"][...], np.isin(np.arange(6), [1, 3, 4]).astype(np.int8))


def test_every_start_of_a_run_is_recorded_with_its_ranks(tmp_path):
    path = tmp_path / "results.h5"
    results.ResultsFile(path, image_names=["1@a.mrcs"], config_yaml="seed: 1\n", fingerprint={"seed": 1}, command_line="lorefine refine c.yaml",
                        version="9.9", resume=False, ranks=2).close()
    results.ResultsFile(path, image_names=["1@a.mrcs"], config_yaml="seed: 1\n", fingerprint={"seed": 1},
                        command_line="lorefine refine c.yaml --continue", version="9.9", resume=True, ranks=3).close()
    attempts = results.run_record(path)["attempts"]
    assert [a["ranks"] for a in attempts] == [2, 3]
    assert [a["command_line"] for a in attempts] == ["lorefine refine c.yaml", "lorefine refine c.yaml --continue"]
    assert all(len(a["started"]) == 19 for a in attempts)  # ISO time to the second
