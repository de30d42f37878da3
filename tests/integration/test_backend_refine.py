"""A whole refinement on the numpy reference back-end (``compute.backend: numpy``) ends with the CPU back-end's poses."""

import h5py
import numpy as np
from runs import edit_config, make_run, run

from lorefine_mpi.geometry import rotations


def final_poses(out):
    with h5py.File(out / "results.h5", "r") as f:
        return {stage: (f[stage]["matrix"][...], f[stage]["origin_px"][...]) for stage in ("iteration_01/large", "iteration_01/small")}


def test_a_refine_on_the_numpy_backend_ends_with_the_cpu_backends_poses(tmp_path):
    outputs = {}
    for name in ("cpu", "numpy"):
        config = make_run(tmp_path / name, n_particles=32)
        edit_config(config, lambda cfg: cfg.update(compute={"backend": name}))
        assert run("refine", str(config)).returncode == 0
        outputs[name] = final_poses(tmp_path / name / "out")
    for stage, (matrices, origins) in outputs["cpu"].items():
        other_matrices, other_origins = outputs["numpy"][stage]
        angle_deg = np.rad2deg(rotations.geodesic_angle(matrices, other_matrices))
        assert angle_deg.max() < 1e-3, (stage, angle_deg.max())
        assert np.abs(origins - other_origins).max() < 1e-4, stage
