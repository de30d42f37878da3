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
import subprocess
import sys
from pathlib import Path

import h5py
import yaml
from refine_runs import environment, lorefine, refine_config, set_name, simulate, timed


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
    data = simulate(work / set_name(args.box, args.particles, args.ctf), args.particles, args.box, args.ctf)
    print(f"{args.particles} particles of {args.box}² at 2 Å/px, SNR 0.25, CTF {'yes' if args.ctf else 'no'}, two modules, "
          f"one rank, one thread, the paper's ranges{', ' + str(extra) if extra else ''}"
          f"{'; the consensus half maps given' if args.consensus_half_maps else ''}")
    given = {"consensus_half_maps": consensus_halves(data)} if args.consensus_half_maps else {}
    for strategy in args.strategies:
        out = work / f"run_{data.name}_{strategy}{'_given_halves' if given else ''}"
        config = refine_config(data, out, strategy=strategy, iterations=args.iterations, search=extra, extra=given)
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
