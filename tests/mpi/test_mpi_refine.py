"""lorefine refine under mpiexec: the same answer for any number of ranks, after a kill and a resume, and
no hung job when a rank fails. Each test starts real MPI jobs in subprocesses (mpi_jobs.py)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mpi_jobs import assert_same, command, env, kill_and_resume, make_run, rank_pids, run, units_done

pytestmark = pytest.mark.mpi


def test_same_results_for_1_2_and_3_ranks(tmp_path):
    folders = {n: make_run(tmp_path / f"ranks{n}") for n in (1, 2, 3)}
    for n, folder in folders.items():
        done = run(n, "refine", str(folder / "config.yaml"))
        assert done.returncode == 0, done.stderr[-3000:]
    for n in (2, 3):
        assert_same(folders[1], folders[n])


@pytest.mark.slow
def test_same_results_for_4_ranks(tmp_path):
    a, b = make_run(tmp_path / "r1"), make_run(tmp_path / "r4")
    assert run(1, "refine", str(a / "config.yaml")).returncode == 0
    done = run(4, "refine", str(b / "config.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(a, b)


@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "master"])
def test_kill_then_continue_equals_an_uninterrupted_run(tmp_path, victim):
    reference = make_run(tmp_path / "reference")
    assert run(3, "refine", str(reference / "config.yaml")).returncode == 0
    assert kill_and_resume(reference, make_run(tmp_path / "killed"), victim, seed=victim)


def test_an_exception_on_one_rank_ends_every_rank_quickly(tmp_path):
    folder = make_run(tmp_path / "fail")
    started = time.time()
    done = run(3, "refine", str(folder / "config.yaml"), script=Path(__file__).parent / "scripts" / "fail_on_rank.py", timeout=60)
    assert done.returncode != 0
    assert time.time() - started < 30
    assert done.stderr.count("lorefine: rank 1/3 failed: RuntimeError: injected failure on rank 1") == 1


def test_sigterm_stops_cleanly_and_resume_completes(tmp_path):
    reference, folder = make_run(tmp_path / "reference"), make_run(tmp_path / "term")
    assert run(2, "refine", str(reference / "config.yaml")).returncode == 0
    config = folder / "config.yaml"
    job = subprocess.Popen(command(2, "refine", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), text=True)
    deadline = time.time() + 120
    while units_done(folder) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in rank_pids(config).values():
        os.kill(pid, signal.SIGTERM)  # what Slurm does to every task before a time limit
    out, err = job.communicate(timeout=60)
    assert job.returncode == 3, err[-2000:]
    assert "--continue" in out
    resumed = run(2, "refine", str(config), "--continue")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(reference, folder)
