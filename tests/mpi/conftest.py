"""Helpers for tests that run lorefine under mpiexec in a subprocess (the robust pattern on CI)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorefine_mpi.io.star import read_star, write_star

DATA = Path(__file__).resolve().parents[1] / "data"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def env():
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


def command(n, *args, script=None):
    program = [sys.executable, "-m", "mpi4py"] + ([str(script)] if script else ["-m", "lorefine_mpi.cli.main"])
    return [MPIEXEC, "-n", str(n)] + program + list(args)


def run(n, *args, script=None, timeout=300):
    return subprocess.run(command(n, *args, script=script), capture_output=True, text=True, timeout=timeout, env=env())


@pytest.fixture
def small_run(tmp_path_factory):
    """A config over the first N particles of the RELION recon_noctf set (box 48), two modules, a small search."""

    def make(name, n_particles=120, unit_size=4, **search):
        folder = tmp_path_factory.mktemp(name)
        table = read_star(DATA / "recon_noctf.star").subset(slice(0, n_particles))
        for f in ("recon_noctf.mrcs", "phantom_whole.mrc", "phantom_mask_module_1.mrc", "phantom_mask_module_2.mrc"):
            shutil.copy(DATA / f, folder / f)
        write_star(folder / "particles.star", table)
        cfg = {
            "particles": "particles.star", "consensus_map": "phantom_whole.mrc",
            "modules": [{"name": "large", "mask": "phantom_mask_module_1.mrc"}, {"name": "small", "mask": "phantom_mask_module_2.mrc"}],
            "search": {"strategy": "separate", "cone_half_angle_deg": 4, "angular_step_deg": 2, "psi_half_range_deg": 2,
                       "psi_step_deg": 2, "max_shift_px": 2, "shift_step_px": 1, "n_random_angles": 4, **search},
            "score": {"mode": "subtract", "ctf": False}, "parallel": {"unit_size": unit_size, "class_spacing_deg": 15},
            "output": "out", "seed": 3,
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return folder

    return make
