"""What a user's run costs: a whole `lorefine refine` on a simulated 128² set, one rank, one thread.

    python benchmarks/bench_refine.py [--work DIR] [--particles 2000] [--box 128] [--ctf] [--strategies separate simultaneous]
                                      [--search KEY=VALUE ...] [--consensus-half-maps]

Simulates (once, cached in DIR) a two-module set with the paper's protocol at 2 Å/px (box 128, SNR 0.25;
``--ctf``: 9 defocus groups 1–3 µm, 300 kV, astigmatism 200 Å), then times `lorefine refine` as a user
runs it (a separate process, `OMP_NUM_THREADS=1`), with the paper's search ranges (cone 10°, 2° steps,
ψ ±6°, ±4 px in 1 px steps), the subtract mode and lorefine's other defaults, one iteration. Prints,
for each strategy: CPU seconds (user + sys of the process, also printed apart with the page faults: on a virtual
machine, memory a process touches first can cost seconds of sys) per particle per module for the whole run
and per stage as the run recorded them (search, reconstruction, writing; `results.h5` attribute
``cpu_seconds``), the number of work units and particles per unit, and the peak RSS.

``--consensus-half-maps``: the run is given the consensus's half maps (``consensus_half_maps``), as a RELION user
gives Refine3D's run_half1/2_class001_unfil.mrc, instead of reconstructing them; they are made once per set with
``lorefine reconstruct --half-maps`` from the consensus poses and half sets (not timed: Refine3D made them).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import yaml

SIMULATION = {
    "seed": 7, "box": 128, "pixel_size_angstrom": 2.0, "origin_sigma_px": 2.0, "source": "phantom", "phantom": {"seed": 11},
    "motion": {"sigma_rot_deg": 1.67, "sigma_shift_px": 1.0}, "noise": {"snr": 0.25},
}
CTF = {"defocus_min_um": 1.0, "defocus_max_um": 3.0, "n_defocus_groups": 9, "astigmatism_angstrom": 200, "voltage_kv": 300,
       "cs_mm": 2.7, "amplitude_contrast": 0.1}
PAPER_RANGES = {"cone_half_angle_deg": 10, "angular_step_deg": 2, "psi_half_range_deg": 6, "psi_step_deg": 2,
                "max_shift_px": 4, "shift_step_px": 1, "n_random_angles": 10}


def environment():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def lorefine(*args):
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


def simulate(folder: Path, n_particles: int, box: int, ctf: bool) -> Path:
    if (folder / "particles.star").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(SIMULATION, n_particles=n_particles, box=box, output=str(folder), ctf=CTF if ctf else None)
    path = folder.parent / f"{folder.name}.simulate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run(lorefine("simulate", str(path)), env=environment(), check=True, capture_output=True)
    return folder


def consensus_halves(data: Path) -> list[str]:
    """The consensus's half maps from its poses and rlnRandomSubset halves (made once per set, as Refine3D writes them)."""
    halves = [data / f"consensus_rebuilt_half{h}.mrc" for h in (1, 2)]
    if not all(h.exists() for h in halves):
        subprocess.run(lorefine("reconstruct", "--particles", str(data / "particles.star"), "--out", str(data / "consensus_rebuilt.mrc"),
                                "--half-maps"), env=environment(), check=True, capture_output=True)
    return [str(h) for h in halves]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/lorefine_bench_refine")
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--ctf", action="store_true")
    p.add_argument("--strategies", nargs="+", default=["separate", "simultaneous"])
    p.add_argument("--search", nargs="+", default=[], metavar="KEY=VALUE", help="search settings besides the paper's ranges")
    p.add_argument("--consensus-half-maps", action="store_true", help="give the run the consensus's half maps (as Refine3D's)")
    p.add_argument("--iterations", type=int, default=1, help="iterations of the run (default 1: the cost of one; lorefine's default is "
                                                             "2); the figures are per particle per module over the whole run")
    args = p.parse_args(argv)
    extra = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.search)}
    work = Path(args.work).resolve()
    data = simulate(work / f"set_{args.box}_{args.particles}_{'ctf' if args.ctf else 'noctf'}", args.particles, args.box, args.ctf)
    print(f"{args.particles} particles of {args.box}² at 2 Å/px, SNR 0.25, CTF {'yes' if args.ctf else 'no'}, two modules, "
          f"one rank, one thread, the paper's ranges{', ' + str(extra) if extra else ''}"
          f"{'; the consensus half maps given' if args.consensus_half_maps else ''}")
    given = {"consensus_half_maps": consensus_halves(data)} if args.consensus_half_maps else {}
    for strategy in args.strategies:
        out = work / f"run_{data.name}_{strategy}{'_given_halves' if given else ''}"
        config = {
            "particles": str(data / "particles.star"), "consensus_map": str(data / "consensus.mrc"),
            "modules": [{"name": "large", "mask": str(data / "mask_module_1.mrc")}, {"name": "small", "mask": str(data / "mask_module_2.mrc")}],
            "search": {"strategy": strategy, **PAPER_RANGES, **extra}, "score": {"mode": "subtract"}, "iterations": args.iterations,
            "output": str(out), "seed": 1, **given,
        }
        path = work / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run(["rm", "-rf", str(out)], check=True)
        code, cpu, rss, wall, usage = timed(lorefine("refine", str(path)))
        if code:
            return code
        parts, units = {"search": 0.0, "reconstruction": 0.0, "writing": 0.0}, []
        with h5py.File(out / "results.h5", "r") as f:
            for it in range(1, args.iterations + 1):
                for name in (f"iteration_{it:02d}/large", f"iteration_{it:02d}/small"):
                    for key, value in json.loads(f[name].attrs["cpu_seconds"]).items():
                        parts[key] += value
                    if it == 1:
                        units.append(int(f[name].attrs["n_units"]))
        per = 1000.0 / (args.particles * 2)
        other = cpu - sum(parts.values())
        print(f"{strategy:12}: whole run{f' ({args.iterations} iterations)' if args.iterations > 1 else ''} {cpu * per:6.1f} ms CPU per particle per module ({cpu:.0f} s CPU: {usage.ru_utime:.0f} user + "
              f"{usage.ru_stime:.1f} sys, {usage.ru_minflt / 1e3:.0f} k page faults; {wall:.0f} s wall); "
              f"search {parts['search'] * per:.1f}, reconstruction {parts['reconstruction'] * per:.1f}, writing {parts['writing'] * per:.1f}, "
              f"start-up and the rest {other * per:.1f} ms; {units[0]} / {units[1]} work units "
              f"({args.particles / units[0]:.1f} / {args.particles / units[1]:.1f} particles per unit); peak RSS {rss:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
