"""`--continue auto`, what a requeued Slurm job runs: resume when the output folder holds the checkpoint, start
afresh when it holds none; plain `--continue` needs a checkpoint."""

import os
import signal
import subprocess
import time

import pytest
from mpi_jobs import assert_same, command, env, make_run, rank_pids, run, units_done

pytestmark = pytest.mark.mpi


def test_continue_auto_starts_afresh_then_resumes_a_stopped_run(tmp_path):
    reference = make_run(tmp_path / "reference", n_particles=64)
    done = run(2, "refine", str(reference / "config.yaml"), "--continue", "auto")  # no checkpoint yet: a fresh run
    assert done.returncode == 0, done.stderr[-2000:]
    folder = make_run(tmp_path / "stopped", n_particles=64)
    config = folder / "config.yaml"
    job = subprocess.Popen(command(2, "refine", str(config), "--continue", "auto"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env(), text=True)
    deadline = time.time() + 120
    while units_done(folder) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in rank_pids(config).values():
        os.kill(pid, signal.SIGUSR1)  # Slurm's signal before the time limit
    job.communicate(timeout=60)
    assert job.returncode == 3
    resumed = run(2, "refine", str(config), "--continue", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(reference, folder)
    log = (folder / "out" / "lorefine.log").read_text()
    assert log.count("stopped on request") == 1 and "done: outputs in" in log  # one log across both attempts


def test_plain_continue_needs_a_checkpoint(tmp_path):
    folder = make_run(tmp_path / "empty", n_particles=20)
    done = run(1, "refine", str(folder / "config.yaml"), "--continue")
    assert done.returncode == 2
    assert "--continue: no checkpoint" in done.stderr and "--continue auto" in done.stderr
    assert not (folder / "out" / "results.h5").exists()
