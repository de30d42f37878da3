import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mpi_jobs import make_run, run  # noqa: E402


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The uninterrupted run of `mpi_jobs.make_run`'s default config by lorefine alone, where MPI cannot even
    be loaded (an mpi4py that fails to import comes first on the path): every rank count, kill and resume
    must give its bits."""
    folder = make_run(tmp_path_factory.mktemp("reference"))
    no_mpi = tmp_path_factory.mktemp("no_mpi")
    (no_mpi / "mpi4py").mkdir()
    (no_mpi / "mpi4py" / "__init__.py").write_text("raise ImportError('no MPI on this machine')\n")
    done = run(0, "refine", str(folder / "config.yaml"), extra_env={"PYTHONPATH": str(no_mpi)})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder
