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
