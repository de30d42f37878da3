"""lorefine refine under mpiexec: same answer for any number of ranks, after a kill and a resume, and
no hung job when a rank fails. Each test starts real MPI jobs in subprocesses."""

import os
import random
import signal
import subprocess
import time

import h5py
import mrcfile
import numpy as np
import pytest

from conftest import command, env, run

pytestmark = pytest.mark.mpi


def results(folder):
    with h5py.File(folder / "out" / "results.h5", "r") as f:
        return {stage: {k: f[stage][k][...] for k in ("matrix", "origin_px", "score", "status", "unit_done")}
                for stage in ("iteration_01/large", "iteration_01/small")}


def maps(folder):
    out = {}
    for module in ("large", "small"):
        with mrcfile.open(folder / "out" / module / "map.mrc") as m:
            out[module] = np.array(m.data)
    return out


def assert_same(a, b, fa, fb):
    for stage in a:
        for key in ("matrix", "origin_px", "score"):
            np.testing.assert_array_equal(a[stage][key], b[stage][key], err_msg=f"{stage}/{key}")
        assert (a[stage]["status"] == 1).all() and (b[stage]["status"] == 1).all()
        assert (b[stage]["unit_done"] == 1).all()
    for module, m in maps(fa).items():
        other = maps(fb)[module]
        assert np.abs(m - other).max() <= 1e-5 * np.abs(m).max()




def test_same_results_for_1_2_and_3_ranks(small_run):
    folders = {}
    for n in (1, 2, 3):
        folders[n] = small_run(f"ranks{n}")
        done = run(n, "refine", str(folders[n] / "config.yaml"))
        assert done.returncode == 0, done.stderr[-3000:]
    reference = results(folders[1])
    for n in (2, 3):
        assert_same(reference, results(folders[n]), folders[1], folders[n])


@pytest.mark.slow
def test_same_results_for_4_ranks(small_run):
    a, b = small_run("r1"), small_run("r4")
    assert run(1, "refine", str(a / "config.yaml")).returncode == 0
    done = run(4, "refine", str(b / "config.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(results(a), results(b), a, b)


def rank_pids(config_path):
    """{rank: pid} of the python processes of the running job (MPICH exports PMI_RANK)."""
    pids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if str(config_path).encode() not in cmdline or b"mpi4py" not in cmdline:
                continue
            environ = dict(kv.split(b"=", 1) for kv in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"PMI_RANK" in environ:
            pids[int(environ[b"PMI_RANK"])] = int(pid)
    return pids


def units_done(folder):
    try:
        with h5py.File(folder / "out" / "results.h5", "r", locking=False) as f:
            return int(f["iteration_01/large/unit_done"][...].sum()) if "iteration_01/large" in f else 0
    except (OSError, KeyError):
        return 0


def kill_and_resume(small_run, name, victim, seed):
    reference, folder = small_run(f"{name}_ref"), small_run(name)
    assert run(3, "refine", str(reference / "config.yaml")).returncode == 0
    config = folder / "config.yaml"
    job = subprocess.Popen(command(3, "refine", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    rng = random.Random(seed)
    target = rng.randint(2, 12)
    deadline = time.time() + 120
    while units_done(folder) < target and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    pids = rank_pids(config)
    killed = job.poll() is None and victim in pids
    if killed:
        os.kill(pids[victim], signal.SIGKILL)
    job.communicate(timeout=60)
    resumed = run(3, "refine", str(config), "--continue")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(results(reference), results(folder), reference, folder)
    return killed


@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "master"])
def test_kill_then_continue_equals_an_uninterrupted_run(small_run, victim):
    assert kill_and_resume(small_run, f"kill{victim}", victim, seed=victim)


def test_an_exception_on_one_rank_ends_every_rank_quickly(small_run, tmp_path):
    from pathlib import Path

    folder = small_run("fail")
    script = Path(__file__).parent / "scripts" / "fail_on_rank.py"
    started = time.time()
    done = run(3, "refine", str(folder / "config.yaml"), script=script, timeout=60)
    assert done.returncode != 0
    assert time.time() - started < 30
    assert done.stderr.count("injected failure on rank 1") >= 1
    assert done.stderr.count("lorefine: rank 1/3 failed") == 1


def test_sigterm_stops_cleanly_and_resume_completes(small_run):
    reference, folder = small_run("term_ref"), small_run("term")
    assert run(2, "refine", str(reference / "config.yaml")).returncode == 0
    config = folder / "config.yaml"
    job = subprocess.Popen(command(2, "refine", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), text=True)
    deadline = time.time() + 120
    while units_done(folder) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in rank_pids(config).values():
        os.kill(pid, signal.SIGTERM)  # what Slurm does to every task
    out, err = job.communicate(timeout=60)
    assert job.returncode == 3, err[-2000:]
    assert "--continue" in out
    resumed = run(2, "refine", str(config), "--continue")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(results(reference), results(folder), reference, folder)
