"""`--j N` (threads per process, set before numpy loads) and a quiet end when stdout's reader goes away."""

import os
import subprocess
import sys

from runs import make_run

from lorefine_mpi.cli.main import THREAD_VARIABLES, set_threads, threads_option

# The threads OpenBLAS (numpy's) runs with in a process started as `lorefine ARGS`.
OPENBLAS_THREADS = """
import sys
sys.argv = ["lorefine"] + sys.argv[1:]
import lorefine_mpi.cli.main
import ctypes, numpy
path = [line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()][0]
lib = ctypes.CDLL(path)
name = [n for n in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads") if hasattr(lib, n)][0]
print(getattr(lib, name)())
"""


def test_threads_option_is_read_from_the_command_line():
    assert threads_option(["refine", "c.yaml", "--j", "4"]) == 4
    assert threads_option(["refine", "--j=2", "c.yaml"]) == 2
    assert threads_option(["refine", "c.yaml"]) is None
    assert threads_option(["refine", "c.yaml", "--j", "0"]) is None  # refused by the parser, not used
    assert threads_option(["refine", "c.yaml", "--j"]) is None


def test_thread_rules():
    env = {"OMP_NUM_THREADS": "8"}
    set_threads(["refine", "c.yaml", "--j", "3"], env)  # --j wins over the environment
    assert {env[v] for v in THREAD_VARIABLES} == {"3"}
    env = {"PMI_SIZE": "4", "OMP_NUM_THREADS": "2"}
    set_threads(["refine", "c.yaml"], env)  # under MPI: 1 per rank unless the user said otherwise
    assert env["OMP_NUM_THREADS"] == "2" and env["OPENBLAS_NUM_THREADS"] == "1" and env["NUMBA_NUM_THREADS"] == "1"
    env = {}
    set_threads(["refine", "c.yaml"], env)  # one process: the libraries' own defaults
    assert env == {}


def test_j_sets_the_blas_threads_before_numpy_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}

    def threads(*args):
        done = subprocess.run([sys.executable, "-c", OPENBLAS_THREADS, *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    assert threads("check", "c.yaml", "--j", "1") == 1
    assert threads("check", "c.yaml", "--j", "2") == min(2, os.cpu_count())
    if os.cpu_count() > 1:
        assert threads("check", "c.yaml") == min(os.cpu_count(), 64)  # without --j OpenBLAS takes every core


def test_a_wrong_thread_count_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "check", "c.yaml", "--j", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["lorefine: error: argument --j: expected a whole number of threads in [1, 1024], got '0' "
                                                "(see 'lorefine --help')"]


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`lorefine check … | head -1`: the reader leaves before lorefine writes; no 'Broken pipe' message, no traceback,
    status 141 (128 + SIGPIPE, as a shell tool killed by the signal)."""
    config = make_run(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "lorefine_mpi.cli.main", "check", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the summary is written
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert stderr == ""
    shell = subprocess.run(["bash", "-c", f"{sys.executable} -m lorefine_mpi.cli.main check {config} | head -1"], capture_output=True,
                           text=True, timeout=120)
    assert shell.stdout.startswith("lorefine check: ") and shell.stdout.count("\n") == 1 and shell.stderr == ""
