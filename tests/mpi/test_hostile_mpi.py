"""A hostile user under MPI (issue 14), launched as users launch it (`mpiexec -n N lorefine ...`): a stopped
rank ends the job within the stall timeout with one line naming it, an error on any rank ends every rank
with one line, Ctrl-C stops with status 3, and no false alarm during a computation longer than the timeout."""

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mpi_jobs import assert_same, command, env, interrupt_and_resume, make_run, rank_pids, run, wait_for_units

pytestmark = pytest.mark.mpi
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")
SCRIPTS = Path(__file__).parent / "scripts"


def messages(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def slow_reconstruction(folder, modules=("large", "small")):
    """The reconstruction made to take seconds (padding 4, 50 gridding iterations: 20 took under 2 s on a fast
    machine), the search kept small."""
    config = folder / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["reconstruction"] = {"padding": 4, "gridding_iterations": 50}
    cfg["modules"] = [m for m in cfg["modules"] if m["name"] in modules]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def wait_for_log(folder, text, job, timeout=180):
    log = folder / "out" / "lorefine.log"
    deadline = time.time() + timeout
    while job.poll() is None and time.time() < deadline:
        if log.exists() and text in log.read_text():
            return True
        time.sleep(0.05)
    return False


def stop_and_wait(job, config, victim, timeout_s):
    """SIGSTOP rank ``victim``; (seconds until the job ended, its stdout, stderr). Leaves no process behind."""
    pids = rank_pids(config)
    assert victim in pids, pids
    os.kill(pids[victim], signal.SIGSTOP)
    stopped = time.time()
    try:
        out, err = job.communicate(timeout=timeout_s + 60)
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return time.time() - stopped, out, err


TIMEOUT_S = 4.0


def test_a_rank_stopped_during_the_search_ends_the_job_naming_it(tmp_path):
    folder = make_run(tmp_path / "run")
    config = folder / "config.yaml"
    job = subprocess.Popen(command(3, "refine", config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env() | {"LOREFINE_STALL_TIMEOUT_S": str(TIMEOUT_S)})
    wait_for_units(folder, job, 3)
    assert job.poll() is None
    ended, out, err = stop_and_wait(job, config, 2, TIMEOUT_S)
    assert job.returncode == 3, err[-2000:]
    assert messages(err) == [f"lorefine: rank 2/3 sent nothing for {TIMEOUT_S:g} s (stopped, dead or hung), so the job ends; "
                             f"finished work is saved, resume with: lorefine refine {config} --continue"], err[-2000:]
    assert 0.75 * TIMEOUT_S <= ended < TIMEOUT_S + 10  # silent since its last heartbeat, up to timeout / 5 before the stop


def test_rank_0_stopped_during_the_reconstruction_ends_the_job_naming_it(tmp_path):
    folder = make_run(tmp_path / "run", n_particles=40)
    config = slow_reconstruction(folder)
    job = subprocess.Popen(command(2, "refine", config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env() | {"LOREFINE_STALL_TIMEOUT_S": str(TIMEOUT_S)})
    assert wait_for_log(folder, "iteration_01/large: mean motion", job)  # the search is over: back-projection and reconstruction
    ended, out, err = stop_and_wait(job, config, 0, TIMEOUT_S)
    assert job.returncode == 3, err[-2000:]
    assert len(messages(err)) == 1 and messages(err)[0].startswith(f"lorefine: rank 0/2 sent nothing for {TIMEOUT_S:g} s"), err[-2000:]
    assert ended < TIMEOUT_S + 10
    assert not (folder / "out" / "small").exists()


def test_no_false_alarm_while_rank_0_computes_for_longer_than_the_timeout(tmp_path):
    """A 1 s timeout, and a reconstruction (rank 0 computes, rank 1 waits) that takes several seconds."""
    folder = make_run(tmp_path / "run", n_particles=40)
    config = slow_reconstruction(folder, modules=("large",))
    done = run(2, "refine", config, extra_env={"LOREFINE_STALL_TIMEOUT_S": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    times = dict(re.findall(r"^(\d\d:\d\d:\d\d) \[0/2\] iteration_01/large: (mean motion|map) ", (folder / "out" / "lorefine.log").read_text(), re.M)[::-1])
    seconds = {what: sum(int(x) * f for x, f in zip(t.split(":"), (3600, 60, 1))) for t, what in times.items()}
    assert seconds["map"] - seconds["mean motion"] >= 2, seconds


@pytest.mark.parametrize("kind", ["injected", "image with NaN"])
def test_an_input_error_on_any_rank_ends_every_rank_with_one_line(tmp_path, kind):
    folder = make_run(tmp_path / "run", n_particles=130)
    config = folder / "config.yaml"
    if kind == "injected":  # on the worker (rank 1), in its first unit
        started = time.time()
        done = run(2, "refine", config, script=SCRIPTS / "fail_on_rank.py", extra_env={"FAIL_KIND": "input"}, timeout=120)
        expected = "lorefine: error: injected input error on rank 1"
    else:  # an image beyond the sample `check` reads: whichever rank reads it
        import mrcfile

        sample = set(np.random.default_rng(0).choice(130, size=100, replace=False).tolist())
        bad = sorted(set(range(130)) - sample)
        with mrcfile.open(folder / "recon_noctf.mrcs", "r+") as m:
            m.data[bad[-1], 5, 5] = np.nan
        started = time.time()
        done = run(2, "refine", config, timeout=120)
        expected = f"recon_noctf.mrcs: image {bad[-1] + 1} ("
    assert done.returncode == 2, done.stderr[-2000:]
    lines = messages(done.stderr)
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert time.time() - started < 90


def test_ctrl_c_under_mpiexec_stops_with_status_3_and_resumes_on_another_rank_count(tmp_path, reference):
    folder = make_run(tmp_path / "interrupted")
    config = folder / "config.yaml"
    job = subprocess.Popen(command(2, "refine", config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for_units(folder, job, 4)
    job.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches mpiexec, which forwards it to every rank
    out, err = job.communicate(timeout=120)
    assert job.returncode == 3, err[-2000:]
    assert messages(err) == [f"lorefine: stopped; finished work is saved. Resume with: lorefine refine {config} --continue"], err[-2000:]
    assert "Ctrl-C" in out  # mpiexec's own lines go to stdout
    resumed = run(3, "refine", config, "--continue")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(reference, folder)


def test_a_stopped_worker_then_a_resume_on_another_rank_count_equals_an_uninterrupted_run(tmp_path, reference):
    trial = interrupt_and_resume(reference, make_run(tmp_path / "stopped"), victim=1, seed=random.Random(7).randint(0, 99), ranks=2,
                                 resume_ranks=3, how=signal.SIGSTOP, stall_timeout_s=TIMEOUT_S)
    assert trial["landed"] and trial["status"] == 3 and trial["ended_s"] < TIMEOUT_S + 10
