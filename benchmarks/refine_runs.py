"""Whole `lorefine refine` runs as a user runs them, measured: the helper of `bench_refine.py` and `bench_scale.py`.

- `simulate`: a set made with `lorefine simulate` and the paper's protocol (cached in its folder): two modules
  (the built-in phantom) or three (its large module cut in two by a plane through its centre of mass, given to
  simulate as ``source: {modules: [...]}``), CTF or not.
- `refine_config`: the run's config (the paper's search ranges, the subtract mode, lorefine's other defaults).
- `run_refine`: ``mpiexec -n R`` (or one process) of the CLI with a CPU clock on each named step
  (`stepclock.py`), the ranks' memory sampled from /proc while they run (`MemorySampler`), and the run's own
  record of its stages' CPU (results.h5); returns a `dict` (`Measurement` fields below).

Memory: /proc/PID/status of every rank, every 0.1 s: ``RssAnon`` (private memory), ``RssShmem`` (MPI shared
windows, counted once per node: every rank maps the same segments) and ``VmHWM`` (the kernel's peak RSS, shared
and file pages included, so never summed over ranks). Per node: the peak over time of Σ RssAnon + max RssShmem.
CPU: user + sys of the whole job (wait4 of the launcher, whose rusage holds every rank it reaped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
SIMULATION = {
    "seed": 7, "box": 128, "pixel_size_angstrom": 2.0, "origin_sigma_px": 2.0, "source": "phantom", "phantom": {"seed": 11},
    "motion": {"sigma_rot_deg": 1.67, "sigma_shift_px": 1.0}, "noise": {"snr": 0.25},
}
CTF = {"defocus_min_um": 1.0, "defocus_max_um": 3.0, "n_defocus_groups": 9, "astigmatism_angstrom": 200, "voltage_kv": 300,
       "cs_mm": 2.7, "amplitude_contrast": 0.1}
PAPER_RANGES = {"cone_half_angle_deg": 10, "angular_step_deg": 2, "psi_half_range_deg": 6, "psi_step_deg": 2,
                "max_shift_px": 4, "shift_step_px": 1, "n_random_angles": 10}
MODULE_NAMES = {2: ["large", "small"], 3: ["large_a", "large_b", "small"]}


def environment(threads: int = 1) -> dict:
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n, PYTHONUNBUFFERED="1")
    return env


def lorefine(*args) -> list:
    return [sys.executable, "-m", "lorefine_mpi.cli.main", *args]


def timed(command):
    """(exit status, CPU seconds user + sys, peak RSS MiB, wall seconds, resource usage) of one child process."""
    started = time.time()
    child = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        print(output[-3000:])
    return child.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, time.time() - started, usage


# -- data sets -----------------------------------------------------------------------------------------------------------
def set_name(box: int, n_particles: int, ctf: bool, modules: int = 2) -> str:
    return f"set_{box}_{n_particles}_{'ctf' if ctf else 'noctf'}{'' if modules == 2 else f'_{modules}mod'}"


def simulate(folder: Path, n_particles: int, box: int, ctf: bool, modules: int = 2) -> Path:
    """The set in ``folder`` (made once): `set_name`'s protocol (module docstring)."""
    if (folder / "particles.star").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(SIMULATION, n_particles=n_particles, box=box, output=str(folder), ctf=CTF if ctf else None)
    if modules == 3:
        config["source"] = {"modules": [str(p) for p in three_module_maps(folder.parent / f"three_modules_{box}", box)]}
    elif modules != 2:
        raise ValueError("modules: 2 or 3")
    path = folder.parent / f"{folder.name}.simulate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run(["nice", "-n", "10", *lorefine("simulate", str(path))], env=environment(), check=True, capture_output=True)
    return folder


def subset(data: Path, n_particles: int) -> Path:
    """A STAR file beside the set's (``particles_<n>.star``, the same stack) of a fixed random sample of ``n_particles``
    of its particles, in their order (so every defocus group and both half sets are in it); the set's own for all."""
    lines = (data / "particles.star").read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("_rln")) + 1  # the particles' rows
    rows = [line for line in lines[start:] if line.strip()]
    if n_particles >= len(rows):
        return data / "particles.star"
    path = data / f"particles_{n_particles}.star"
    if not path.exists():
        keep = np.sort(np.random.default_rng(0).choice(len(rows), n_particles, replace=False))
        path.write_text("\n".join(lines[:start] + [rows[i] for i in keep]) + "\n")
    return path


def three_module_maps(folder: Path, box: int) -> list[Path]:
    """Three module maps (MRC) of the built-in phantom at ``box``: its large module cut by the plane through its centre of
    mass normal to its longest principal axis, and its small module."""
    from lorefine_mpi.io import mrc
    from lorefine_mpi.simulate.phantoms import make_phantom

    paths = [folder / f"module_{k}.mrc" for k in (1, 2, 3)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(box, SIMULATION["phantom"]["seed"])
    large, small = phantom.module_maps
    grid = np.stack(np.meshgrid(*(np.arange(box, dtype=np.float64),) * 3, indexing="ij"), -1).reshape(-1, 3)
    weight = np.clip(large.reshape(-1), 0, None)
    centre = (grid * weight[:, None]).sum(0) / weight.sum()
    spread = ((grid - centre) * weight[:, None]).T @ (grid - centre) / weight.sum()
    axis = np.linalg.eigh(spread)[1][:, -1]
    side = (((grid - centre) @ axis) > 0).reshape(large.shape)
    for path, volume in zip(paths, (large * side, large * ~side, small)):
        mrc.write_map(path, volume.astype(np.float32), SIMULATION["pixel_size_angstrom"])
    return paths


def refine_config(data: Path, out: Path, *, particles: Path | None = None, modules: int = 2, strategy: str = "separate", iterations: int = 1, postprocess: bool = True,
                  search: dict | None = None, extra: dict | None = None) -> dict:
    """The run's config: the set's masks as modules, the paper's ranges (``search`` overrides them), the subtract mode."""
    return {
        "particles": str(particles or data / "particles.star"), "consensus_map": str(data / "consensus.mrc"),
        "modules": [{"name": name, "mask": str(data / f"mask_module_{k}.mrc")} for k, name in enumerate(MODULE_NAMES[modules], 1)],
        "search": {"strategy": strategy, **PAPER_RANGES, **(search or {})}, "score": {"mode": "subtract"}, "iterations": iterations,
        "postprocess": {"enabled": postprocess}, "output": str(out), "seed": 1, **(extra or {}),
    }


# -- one measured run ----------------------------------------------------------------------------------------------------
_STATUS_FIELDS = ("VmHWM", "RssAnon", "RssFile", "RssShmem")


def _children(pid: int) -> dict:
    """{pid: ppid} of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    found[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return found


def _descendants(root: int) -> list[int]:
    """``root`` and every process under it."""
    parents = _children(root)
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, q in parents.items() if q in frontier]
        out += frontier
    return out


def _status_kib(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
        with open(f"/proc/{pid}/cmdline") as f:
            cmdline = f.read()
    except OSError:
        return None
    argv = cmdline.split("\0")
    if not (Path(argv[0]).name.startswith("python") and len(argv) > 1 and argv[1].endswith("stepclock.py")):
        return None  # the launcher and its proxies
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in _STATUS_FIELDS:
            fields[key] = int(value.split()[0])
    return fields if len(fields) == len(_STATUS_FIELDS) else None


class MemorySampler(threading.Thread):
    """Peak memory of the ranks under ``root`` (the launcher's pid), sampled every ``period_s`` (module docstring)."""

    def __init__(self, root: int, expected: int, period_s: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.expected, self.period_s = root, expected, period_s
        self.per_pid = {}  # pid -> {field: peak KiB}
        self.node_peak_kib = 0
        self.done = threading.Event()

    def run(self):
        ranks = []
        while not self.done.is_set():
            if len(self.per_pid) < self.expected:
                ranks = _descendants(self.root)  # look again until every rank has started
            total_anon, shmem = 0, 0
            for pid in ranks:
                status = _status_kib(pid)
                if status is None:
                    continue
                peaks = self.per_pid.setdefault(pid, dict.fromkeys(_STATUS_FIELDS, 0))
                for key, value in status.items():
                    peaks[key] = max(peaks[key], value)
                total_anon += status["RssAnon"]
                shmem = max(shmem, status["RssShmem"])
            self.node_peak_kib = max(self.node_peak_kib, total_anon + shmem)
            self.done.wait(self.period_s)


def stage_records(results_path: Path) -> dict:
    """{stage: {"cpu_seconds": {part: s}, "search_band_px": px, "n_units": n}} from a run's results.h5."""
    found = {}
    with h5py.File(results_path, "r") as f:
        for iteration in sorted(k for k in f if k.startswith("iteration_")):
            for module, group in f[iteration].items():
                if isinstance(group, h5py.Group) and "cpu_seconds" in group.attrs:
                    found[f"{iteration}/{module}"] = {
                        "cpu_seconds": json.loads(group.attrs["cpu_seconds"]),
                        "search_band_px": float(group.attrs["search_band_px"]) if "search_band_px" in group.attrs else None,
                        "n_units": int(group.attrs["n_units"]) if "n_units" in group.attrs else None,
                    }
    return found


def run_refine(config: dict, config_path: Path, ranks: int, *, clock_dir: Path | None = None, nice: int = 10) -> dict:
    """Run ``config`` (written to ``config_path``; its output folder emptied first) on ``ranks`` processes (1: no
    launcher, as `lorefine refine`; more: ``mpiexec -n ranks``); a dict of what was measured (module docstring)."""
    out = Path(config["output"])
    shutil.rmtree(out, ignore_errors=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    clock_dir = clock_dir or out.parent / f".{out.name}.stepclock"
    shutil.rmtree(clock_dir, ignore_errors=True)
    program = [sys.executable, str(HERE / "stepclock.py"), "refine", str(config_path)]
    launcher = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] if ranks > 1 else []
    env = environment() | {"LOREFINE_STEPCLOCK_DIR": str(clock_dir)}
    load_before = os.getloadavg()[0]
    started = time.time()
    child = subprocess.Popen(["nice", "-n", str(nice), *launcher, *program], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    sampler = MemorySampler(child.pid, ranks)
    sampler.start()
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    sampler.done.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(f"lorefine refine {config_path} on {ranks} rank(s) exited {code}:\n{output[-3000:]}")
    clocks = [json.loads(p.read_text()) for p in sorted(clock_dir.glob("rank_*.json"))]
    by_pid = {c["pid"]: c["rank"] for c in clocks}
    memory = {by_pid.get(pid, -1): peaks for pid, peaks in sampler.per_pid.items() if pid in by_pid}
    return {
        "ranks": ranks, "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
        "wall_s": time.time() - started, "load_before": load_before, "load_after": os.getloadavg()[0],
        "rank_cpu_s": {c["rank"]: c["process_cpu_s"] for c in clocks},
        "steps": _summed_steps(clocks), "rank_steps": {c["rank"]: c["steps"] for c in clocks},
        "missing_steps": sorted({m for c in clocks for m in c["missing"]}),
        "stages": stage_records(out / "results.h5"),
        "memory_kib": {str(rank): peaks for rank, peaks in sorted(memory.items())}, "node_peak_kib": sampler.node_peak_kib,
    }


def _summed_steps(clocks) -> dict:
    total = {}
    for c in clocks:
        for key, seconds in c["steps"].items():
            total[key] = total.get(key, 0.0) + seconds
    return {k: round(v, 3) for k, v in sorted(total.items())}
