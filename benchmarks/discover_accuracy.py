"""`lorefine discover` on simulated sets with known modules: modules found vs true, Dice of each found module with its
matching true module on hard labels, and discover's CPU seconds vs one refine iteration of the same particles.

    python benchmarks/discover_accuracy.py --folder /tmp/disc_bench --modules 1 2 3 --box 64 --particles 2000

Per set (``--modules K``: K = 1 is the default two-module phantom with no motion, a rigid particle; K = 2 the default
two-module phantom moving; K ≥ 3 a K-module phantom, ``--fractions`` or equal-ish defaults), `lorefine simulate`
makes the data, then, as subprocesses of this script (their CPU time from ``RUSAGE_CHILDREN``):
    discover    lorefine discover with the whole-particle mask (mask_whole.mrc) and the benchmark's search settings
    refine      lorefine refine of the simulator's lorefine.yaml (the true masks), one iteration, post-processing off,
                the same search settings, on the same particles
The Dice coefficient compares hard labels (`discover.probes.hard_labels`: each voxel to its largest mask where the
masks sum to ≥ 0.5) of the discovered and the true masks, found modules matched one to one to true ones by the
Hungarian assignment on Dice (a module left unmatched scores 0).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

LOREFINE = [sys.executable, "-m", "lorefine_mpi.cli.main"]
FRACTIONS = {3: [0.5, 0.3, 0.2], 4: [0.4, 0.25, 0.2, 0.15]}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command, log_path: Path) -> tuple[float, float]:
    """Run ``command`` (nice'd), its output to ``log_path``; (CPU seconds, wall seconds). Raises when it fails."""
    before, started = children_cpu_s(), time.time()
    with open(log_path, "w") as log:
        done = subprocess.run(["nice", "-n", "15", *command], stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed ({done.returncode}); see {log_path}")
    return children_cpu_s() - before, time.time() - started


def simulate(folder: Path, k: int, args) -> Path:
    data = folder / "data"
    if (data / "lorefine.yaml").exists():
        return data
    cfg = {"output": "data", "seed": args.seed, "n_particles": args.particles, "box": args.box, "pixel_size_angstrom": args.pixel_size,
           "origin_sigma_px": 1.0, "motion": {"sigma_rot_deg": 0.0 if k == 1 else args.sigma_rot_deg,
                                              "sigma_shift_px": 0.0 if k == 1 else args.sigma_shift_px},
           "noise": {"snr": args.snr}, "phantom": {"seed": 10 + args.seed} | ({"modules": FRACTIONS[k]} if k >= 3 else {})}
    if args.ctf:
        cfg["ctf"] = {"defocus_min_um": 0.8, "defocus_max_um": 2.5, "n_defocus_groups": 20}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "simulate.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    timed([*LOREFINE, "simulate", folder / "simulate.yaml"], folder / "simulate.log")
    return data


def dice_table(found_masks, true_masks) -> tuple[list[float], np.ndarray]:
    """(Dice of each found module with its assigned true module, 0 when unassigned; the full Dice matrix)."""
    from scipy.optimize import linear_sum_assignment

    from lorefine_mpi.discover.probes import hard_labels

    f, t = hard_labels(found_masks), hard_labels(true_masks)
    d = np.zeros((len(found_masks), len(true_masks)))
    for i in range(len(found_masks)):
        a = f == i
        for j in range(len(true_masks)):
            b = t == j
            d[i, j] = 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
    rows, cols = linear_sum_assignment(-d)
    best = [0.0] * len(found_masks)
    for r, c in zip(rows, cols):
        best[r] = float(d[r, c])
    return best, d


def run_set(k: int, args) -> dict:
    from lorefine_mpi.io import mrc

    folder = Path(args.folder) / f"modules{k}_seed{args.seed}"
    data = simulate(folder, k, args)
    search = {"strategy": "separate", "cone_half_angle_deg": args.cone_deg, "angular_step_deg": 2, "psi_half_range_deg": args.cone_deg,
              "psi_step_deg": 2, "max_shift_px": 3, "shift_step_px": 1, "n_random_angles": 6}
    disc = {"particles": str(data / "particles.star"), "consensus_map": str(data / "consensus.mrc"), "mask": str(data / "mask_whole.mrc"),
            "output": str(folder / "discover"), "seed": args.seed, "search": search, "project_dir": str(data),
            "discover": {"sample_size": args.sample} | ({"probes": args.probes} if args.probes else {})}
    (folder / "discover.yaml").write_text(yaml.safe_dump(disc, sort_keys=False))
    refine = yaml.safe_load((data / "lorefine.yaml").read_text())
    refine |= {"iterations": 1, "postprocess": {"enabled": False}, "search": search, "output": str(folder / "refine1"),
               "project_dir": str(data)}
    refine["particles"], refine["consensus_map"] = str(data / "particles.star"), str(data / "consensus.mrc")
    refine["modules"] = [m | {"mask": str(data / m["mask"])} for m in refine["modules"]]
    (folder / "refine1.yaml").write_text(yaml.safe_dump(refine, sort_keys=False))
    if not (folder / "discover" / "discover.json").exists():
        disc_cpu, disc_wall = timed([*LOREFINE, "discover", folder / "discover.yaml"], folder / "discover.log")
        (folder / "discover_cpu_s.txt").write_text(f"{disc_cpu} {disc_wall}")
    disc_cpu, disc_wall = map(float, (folder / "discover_cpu_s.txt").read_text().split())
    if args.refine and not (folder / "refine1_cpu_s.txt").exists():
        cpu, wall = timed([*LOREFINE, "refine", folder / "refine1.yaml"], folder / "refine1.log")
        (folder / "refine1_cpu_s.txt").write_text(f"{cpu} {wall}")
    refine_cpu = float((folder / "refine1_cpu_s.txt").read_text().split()[0]) if (folder / "refine1_cpu_s.txt").exists() else float("nan")
    summary = yaml.safe_load((folder / "discover" / "discover.json").read_text())
    found = [mrc.read_map(folder / "discover" / m)[0] for m in summary["masks"]]
    n_true = 1 if k == 1 else k
    true = [mrc.read_map(data / "mask_whole.mrc")[0]] if k == 1 else [mrc.read_map(data / f"mask_module_{j + 1}.mrc")[0] for j in range(k)]
    dice, _ = dice_table(found, true)
    return {"k": n_true, "found": summary["modules"], "probes": summary["probes"], "dice": dice, "threshold": summary["threshold"],
            "null_sigma": summary["null_sigma"], "discover_cpu_s": disc_cpu, "refine_cpu_s": refine_cpu, "particles": args.particles,
            "sample": summary["particles_searched"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--modules", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--pixel-size", type=float, default=3.0)
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--probes", type=int, default=0, help="0: auto")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--ctf", action="store_true")
    p.add_argument("--sigma-rot-deg", type=float, default=3.0)
    p.add_argument("--sigma-shift-px", type=float, default=1.5)
    p.add_argument("--cone-deg", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-refine", dest="refine", action="store_false", help="skip the refine iteration (its CPU time is then n/a)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = [run_set(k, args) for k in args.modules]
    print(f"discover accuracy: box {args.box}, {args.pixel_size:g} Å/px, {args.particles} particles, SNR {args.snr:g}"
          f"{', CTF' if args.ctf else ''}, motion {args.sigma_rot_deg:g}° / {args.sigma_shift_px:g} px, seed {args.seed}")
    print(f"{'true':>4} {'found':>5} {'probes':>6} {'tau':>6} {'nullσ':>6}  {'Dice per found module':<28} {'discover CPU s':>14} "
          f"{'refine 1 it CPU s':>17} {'ratio':>6}")
    for r in rows:
        dice = " ".join(f"{d:.3f}" for d in r["dice"])
        print(f"{r['k']:>4} {r['found']:>5} {r['probes']:>6} {r['threshold']:>6.3f} {r['null_sigma']:>6.3f}  {dice:<28} "
              f"{r['discover_cpu_s']:>14.0f} {r['refine_cpu_s']:>17.0f} {r['discover_cpu_s'] / r['refine_cpu_s']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
