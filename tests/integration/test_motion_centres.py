"""The motion analysis measures each module's rotation about the centre its refinement turned it about: its
``centre_px`` when given (not the consensus map's centre of mass in its mask)."""

import h5py
import numpy as np
from runs import edit_config, make_run, run


def test_the_motion_is_measured_about_the_modules_own_centre(tmp_path):
    config = make_run(tmp_path, n_particles=16, postprocess={"enabled": True, "local_resolution": False, "motion_components": 0})

    def own_centre(cfg):
        cfg["modules"][0]["centre_px"] = [2.0, -3.0, 1.5]

    edit_config(config, own_centre)
    done = run("refine", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(tmp_path / "out" / "results.h5", "r") as f:
        centres = f["motion"].attrs["centres_px"]
    np.testing.assert_array_equal(centres[0], [2.0, -3.0, 1.5])
    assert not np.array_equal(centres[1], centres[0])  # the other module: its own centre of mass
