"""Run lorefine under mpiexec in subprocesses, kill ranks, compare outcomes. Shared by tests/mpi and
benchmarks/bench_kill_trials.py (the robust pattern: never run pytest itself under mpiexec)."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import yaml

from lorefine_mpi.io.star import read_star, write_star

DATA = Path(__file__).resolve().parents[1] / "data"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
LOREFINE = shutil.which("lorefine", path=str(Path(sys.executable).parent)) or shutil.which("lorefine")  # as users launch it
STAGES = ("iteration_01/large", "iteration_01/small")


def env():
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


def command(n, *args, script=None, mpi4py_runner=False):
    """``mpiexec -n N lorefine ARGS`` as users launch it (n = 0: lorefine alone, no MPI launcher); with
    ``script``, a test driver run by python (through mpi4py's runner when asked)."""
    if script:
        program = [sys.executable] + (["-m", "mpi4py"] if mpi4py_runner else []) + [str(script)]
    else:
        program = [LOREFINE]
    return ([MPIEXEC, "-n", str(n)] if n else []) + program + [str(a) for a in args]


def run(n, *args, script=None, mpi4py_runner=False, timeout=300, extra_env=None):
    return subprocess.run(command(n, *args, script=script, mpi4py_runner=mpi4py_runner), capture_output=True, text=True,
                          timeout=timeout, env=env() | (extra_env or {}))


def make_run(folder: Path, n_particles=120, unit_size=4, postprocess=None, **search) -> Path:
    """A config over the first particles of the RELION recon_noctf set (box 48), two modules, a small search; the
    folder is the RELION project directory (``project_dir: .``), its STAR file's image names relative to it; the
    end-of-run analysis (post-processing, local resolution, motion, report) only with ``postprocess``."""
    folder.mkdir(parents=True, exist_ok=True)
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
        "postprocess": postprocess or {"enabled": False}, "output": "out", "project_dir": ".", "seed": 3, "iterations": 1,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def results(folder):
    with h5py.File(folder / "out" / "results.h5", "r") as f:
        return {stage: {k: f[stage][k][...] for k in ("search_matrix", "search_origin_px", "matrix", "origin_px", "score", "status", "unit_done")}
                for stage in STAGES}


def maps(folder):
    out = {}
    for module in ("large", "small"):
        with mrcfile.open(folder / "out" / module / "map.mrc") as m:
            out[module] = np.array(m.data)
    return out


def assert_same(folder_a, folder_b):
    """Per-particle parameters and maps bitwise equal, every particle done once."""
    a, b = results(folder_a), results(folder_b)
    for stage in STAGES:
        for key in ("search_matrix", "search_origin_px", "matrix", "origin_px", "score"):
            np.testing.assert_array_equal(a[stage][key], b[stage][key], err_msg=f"{stage}/{key}")
        assert (a[stage]["status"] == 1).all() and (b[stage]["status"] == 1).all()
        assert (b[stage]["unit_done"] == 1).all()
    other = maps(folder_b)
    for module, m in maps(folder_a).items():
        np.testing.assert_array_equal(m, other[module], err_msg=f"{module}/map.mrc")


def rank_pids(config_path):
    """{rank: pid} of the ranks of the running job (MPICH exports PMI_RANK; mpiexec itself has none)."""
    pids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if str(config_path).encode() not in cmdline or b"mpiexec" in cmdline[0]:
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
            return int(f[STAGES[0]]["unit_done"][...].sum()) if STAGES[0] in f else 0
    except (OSError, KeyError):
        return 0


def wait_for_units(folder, job, count, timeout=120):
    deadline = time.time() + timeout
    while units_done(folder) < count and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def interrupt_and_resume(reference: Path, folder: Path, victim: int, seed: int, ranks: int = 3, resume_ranks: int | None = None,
                         how=signal.SIGKILL, stall_timeout_s: float = 5.0) -> dict:
    """Start a run on ``ranks`` ranks, send ``how`` (SIGKILL or SIGSTOP) to rank ``victim`` after a random
    number of finished units, resume with --continue on ``resume_ranks`` ranks, and check the outcome equals
    the finished ``reference`` run. Returns {'landed': the signal came mid-run, 'ended_s': seconds from the
    signal to the end of the job, 'status': its exit status}."""
    config = folder / "config.yaml"
    extra = {"LOREFINE_STALL_TIMEOUT_S": str(stall_timeout_s)}
    job = subprocess.Popen(command(ranks, "refine", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env() | extra)
    wait_for_units(folder, job, random.Random(seed).randint(2, 12))
    pids = rank_pids(config)
    landed = job.poll() is None and victim in pids
    sent = time.time()
    if landed:
        os.kill(pids[victim], how)
    try:
        job.communicate(timeout=stall_timeout_s + 60)
    finally:
        for pid in pids.values():  # nothing of the job may outlive it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    ended = time.time() - sent
    resumed = run(ranks if resume_ranks is None else resume_ranks, "refine", str(config), "--continue", extra_env=extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(reference, folder)
    return {"landed": landed, "ended_s": ended, "status": job.returncode}
