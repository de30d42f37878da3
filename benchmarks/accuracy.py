"""How close lorefine's module maps and poses come to the best the data allow, on a simulated set.

    python benchmarks/accuracy.py DATASET_DIR [--run OUT_DIR | --iterations N] [--ranks 2] [--set KEY=VALUE ...]
                                  [--work DIR] [--png DIR]

DATASET_DIR is a `lorefine simulate` output (or shared/fixtures/flex_dev_snr025): particles.star with the
consensus poses, the consensus map, gt_module_k.mrc / .star (each module's true map and poses) and
mask_module_k.mrc. Without --run, `mpiexec -n RANKS lorefine refine` runs with lorefine's defaults (plus
--set KEY=VALUE overrides, dotted keys such as search.prior_sigma_deg=null) into WORK/run.

Printed per module, against the true module map inside the module's mask: for (a) the consensus map,
(b) lorefine's map after each iteration and (c) the map rebuilt from the true module poses (the ceiling:
the same reconstruction, the same images), the masked correlation, FSC 0.5 and the mean FSC over the
outer half of the band (0.5 – 1 × Nyquist; it keeps telling maps apart when FSC 0.5 sits at Nyquist),
and the fraction of the room closed, (b − a) / (c − a), in masked correlation; for the poses of each
iteration, the median angular error, origin error and projected-centre error (where the module's centre
lands in the image) against the true module poses; and the RMS angular error, and the median angular error in the
quarter of the particles whose module moved least from its consensus pose and in the quarter that moved most (the
paper's motion turns each module by a normally distributed angle about a random axis: a quarter of them by less
than 0.3 of its σ, where any noise in an estimate costs more than the consensus pose does). --png writes the FSC
curves per module.

Every module of the set is reported, with the names and masks of the set's lorefine.yaml (any number of modules;
a set without one: gt_module_1.mrc … named as `lorefine simulate` names them). With --match-masks (a run whose modules
are not the set's, e.g. the masks `lorefine discover` found), each true module is reported with the run's module
whose mask matches it best (one to one, the Hungarian assignment on the Dice coefficient of hard labels, as
discover_accuracy.py scores them); the match and its Dice are printed. Last, a summary with one line per
module (its share of the mass, the masked correlation of the consensus map, of lorefine's map after each iteration
and of the true-pose map, the room, FSC 0.5 of lorefine's last map and of the true-pose map, the median angle
and projected-centre errors from the consensus to lorefine's last iteration) and, when this script ran lorefine,
the job's CPU seconds (all ranks) and per particle per module per iteration.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from compare_groundtruth import masked_correlation, module_list  # noqa: E402
from discover_accuracy import dice_table  # noqa: E402

from lorefine_mpi.config.schema import Config  # noqa: E402
from lorefine_mpi.geometry import (
    rotations,  # noqa: E402
    volumes,  # noqa: E402
)
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star  # noqa: E402
from lorefine_mpi.projection.source import ParticleSource  # noqa: E402
from lorefine_mpi.reconstruction.reconstruct import backproject_halves, maps_from_halves  # noqa: E402
from lorefine_mpi.validation import fsc  # noqa: E402

DEFAULT_ITERATIONS = Config.__dataclass_fields__["iterations"].default  # lorefine's own


def consensus_map_path(data: Path) -> Path:
    return next(p for p in (data / "consensus.mrc", data / "consensus_relion.mrc") if p.exists())


def run_lorefine(data: Path, work: Path, iterations: int, ranks: int, overrides) -> Path:
    config = {
        "particles": str(data / "particles.star"), "consensus_map": str(consensus_map_path(data)),
        "modules": [{"name": name, "mask": str(data / f"mask_module_{k}.mrc")} for name, k in module_list(data)],
        "iterations": iterations, "output": str(work / "run"), "seed": 1,
    }
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[leaf] = value
    work.mkdir(parents=True, exist_ok=True)
    (work / "lorefine.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.rmtree(work / "run", ignore_errors=True)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mpiexec"), "-n", str(ranks), str(bin_dir / "lorefine"), "refine", str(work / "lorefine.yaml")]
    print("$ " + " ".join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # the job's processes, all ranks
    (work / "cpu_seconds.txt").write_text(f"{cpu:.1f}\n")
    return work / "run"


def ceiling_map(data: Path, k: int, work: Path, box: int) -> np.ndarray:
    """The module rebuilt from its true poses, as lorefine rebuilds a module (mean of the two half maps)."""
    path = work / f"ceiling_module_{k}.mrc"
    if path.exists():
        return mrc.read_map(path)[0]
    table = read_star(data / f"gt_module_{k}.star")
    work.mkdir(parents=True, exist_ok=True)
    full = rebuilt_map(table, box)
    mrc.write_map(path, full, float(table.pixel_size_angstrom()[0]))
    return full


def rebuilt_map(table, box: int) -> np.ndarray:
    """The map of a STAR table's particles at its poses, as lorefine rebuilds a module (mean of the two half maps)."""
    return maps_from_halves(backproject_halves(ParticleSource(table, box, table.has_ctf), np.arange(len(table))))["full"]


def pose_errors(table, truth, centre_px, motion_deg=None):
    """Median angle (deg), origin (px) and projected-centre (px) errors of a table's poses; then the RMS angle
    (deg), and the median angle in the quarter of the particles whose module moved least away from the consensus
    pose (motion_deg: each particle's true angle from it; None: NaN) and in the quarter that moved most."""
    a, b = table.matrices, truth.matrices
    angle = np.rad2deg(rotations.geodesic_angle(a, b))
    origin = np.linalg.norm(table.origin_px - truth.origin_px, axis=1)
    where = rotations.image_position_px(a, centre_px[None], table.origin_px)[:, 0]
    where_true = rotations.image_position_px(b, centre_px[None], truth.origin_px)[:, 0]
    least = most = float("nan")
    if motion_deg is not None:
        low, high = np.quantile(motion_deg, [0.25, 0.75])
        least, most = float(np.median(angle[motion_deg <= low])), float(np.median(angle[motion_deg >= high]))
    return (float(np.median(angle)), float(np.median(origin)), float(np.median(np.linalg.norm(where - where_true, axis=1))),
            float(np.sqrt(np.mean(angle**2))), least, most)


def module_truth(data: Path, k: int):
    """Module k's true map, mask, true poses (STAR table) and centre of mass (xyz px from the box centre)."""
    truth_map, _ = mrc.read_map(data / f"gt_module_{k}.mrc")
    mask, _ = mrc.read_map(data / f"mask_module_{k}.mrc")
    return truth_map, mask, read_star(data / f"gt_module_{k}.star"), volumes.centre_of_mass_px(truth_map, mask)


def map_figures(volume, truth, mask, voxel):
    curve = fsc.fsc(volume * mask, truth * mask, voxel)
    outer = curve.fsc[len(curve.fsc) // 2 :]
    return masked_correlation(volume, truth, mask), fsc.resolution_at(curve, 0.5), float(outer.mean()), curve


def iteration_folders(run: Path, name: str):
    folders = sorted(run.glob(f"iteration_*/{name}"))
    return [(int(f.parent.name.split("_")[1]), f) for f in folders] + [(len(folders) + 1, run / name)]


def matched_modules(data: Path, run: Path) -> dict[int, str]:
    """{k: the name of the run's module matched to the set's module k} (--match-masks; module docstring), printed."""
    from scipy.optimize import linear_sum_assignment

    modules = yaml.safe_load((run / "config.yaml").read_text())["modules"]
    true = module_list(data)
    _, dice = dice_table([mrc.read_map(m["mask"])[0] for m in modules], [mrc.read_map(data / f"mask_module_{k}.mrc")[0] for _, k in true])
    matched = {}
    for i, j in zip(*linear_sum_assignment(-dice)):
        matched[true[j][1]] = modules[i]["name"]
        print(f"run module {modules[i]['name']} ({modules[i]['mask']}) <-> true {true[j][0]}: Dice {dice[i, j]:.3f}")
    missing = [name for name, k in true if k not in matched]
    if missing:
        raise SystemExit(f"--match-masks: no run module matched to true module(s) {', '.join(missing)}")
    return matched


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--run", help="a finished lorefine output folder (default: run lorefine)")
    p.add_argument("--iterations", type=lambda v: v if v == "auto" else int(v), default=DEFAULT_ITERATIONS,
                   help="a number or auto (default: lorefine's)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", help="folder for the run and the ceiling maps (default DATASET/accuracy)")
    p.add_argument("--png", help="write the FSC curves per module into this folder")
    p.add_argument("--match-masks", action="store_true", help="report each true module with the run's module whose mask matches it best")
    args = p.parse_args(argv)
    data = Path(args.dataset).resolve()
    work = Path(args.work).resolve() if args.work else data / "accuracy"
    work.mkdir(parents=True, exist_ok=True)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    run = Path(args.run).resolve() if args.run else run_lorefine(data, work, args.iterations, args.ranks, overrides)
    consensus, voxel = mrc.read_map(consensus_map_path(data))
    box = consensus.shape[0]
    consensus_table = read_star(data / "particles.star")
    print(f"{data.name}: {len(consensus_table)} particles, box {box}, {voxel:g} Å/px; run {run}"
          + (f" ({', '.join(args.set)})" if args.set else ""))
    run_name = matched_modules(data, run) if args.match_masks else {k: name for name, k in module_list(data)}
    print(f"{'module':7} {'map':16} {'masked corr':>11} {'room':>7} {'FSC 0.5':>8} {'FSC 0.5-1 Nyq':>13} "
          f"{'angle':>7} {'origin':>7} {'centre':>7} {'rms angle':>9} {'least/most moved':>16}")
    summary = []
    masses = {k: float(module_truth(data, k)[0].sum()) for _, k in module_list(data)}
    for name, k in module_list(data):
        truth_map, mask, truth, centre = module_truth(data, k)
        low = map_figures(consensus, truth_map, mask, voxel)
        high = map_figures(ceiling_map(data, k, work, box), truth_map, mask, voxel)
        curves = {"consensus": low[3], "true poses": high[3]}
        motion = np.rad2deg(rotations.geodesic_angle(consensus_table.matrices, truth.matrices))
        rows = [("consensus", low, pose_errors(consensus_table, truth, centre, motion))]
        for iteration, folder in iteration_folders(run, run_name[k]):
            figures = map_figures(mrc.read_map(folder / "map.mrc")[0], truth_map, mask, voxel)
            rows.append((f"lorefine it. {iteration}", figures, pose_errors(read_star(folder / "particles.star"), truth, centre, motion)))
            curves[f"lorefine iteration {iteration}"] = figures[3]
        rows.append(("true poses", high, None))
        for label, (corr, res05, outer, _), poses in rows:
            room = (corr - low[0]) / (high[0] - low[0]) if high[0] != low[0] else float("nan")
            pose_text = "" if poses is None else (f"{poses[0]:6.2f}° {poses[1]:5.2f}px {poses[2]:5.2f}px {poses[3]:8.2f}° "
                                                  f"{poses[4]:7.2f}° / {poses[5]:.2f}°")
            print(f"{name:7} {label:16} {corr:11.4f} {100 * room:6.1f}% {res05:7.2f}Å {outer:13.3f} {pose_text}")
        summary.append((name, 100 * masses[k] / sum(masses.values()), rows))
        if args.png:
            Path(args.png).mkdir(parents=True, exist_ok=True)
            fsc.plot_fsc_png(Path(args.png) / f"fsc_{name}.png", curves, f"{data.name}, {name}: FSC against the true module map")
    print_summary(summary, work if not args.run else None, len(consensus_table))
    return 0


def print_summary(summary, work, n_particles):
    """One line per module (the issue's table): masked correlation of the consensus map, of lorefine's map after
    each iteration and of the true-pose map; the room closed by the last iteration; FSC 0.5 of lorefine's last map
    (of the true-pose map); median angle and projected-centre errors, consensus -> lorefine's last iteration."""
    print("\nsummary (masked correlation with the true module map; room = (lorefine - consensus) / (true poses - consensus))")
    print(f"{'module':8} {'mass':>5} {'consensus CC':>12} {'lorefine CC per iteration':>26} {'true-pose CC':>12} {'room':>7} "
          f"{'FSC 0.5 (true poses)':>21} {'median angle':>17} {'median centre':>19}")
    for name, mass, rows in summary:
        (_, low, poses_low), lorefine, (_, high, _) = rows[0], rows[1:-1], rows[-1]
        last, poses_last = lorefine[-1][1], lorefine[-1][2]
        room = 100 * (last[0] - low[0]) / (high[0] - low[0]) if high[0] != low[0] else float("nan")
        per_iteration = " ".join(f"{figures[0]:.4f}" for _, figures, _ in lorefine)
        print(f"{name:8} {mass:4.1f}% {low[0]:12.4f} {per_iteration:>26} {high[0]:12.4f} {room:6.1f}% "
              f"{last[1]:8.2f}Å ({high[1]:.2f}Å) {poses_low[0]:7.2f}° → {poses_last[0]:.2f}° {poses_low[2]:7.2f}px → {poses_last[2]:.2f}px")
    if work is not None and (work / "cpu_seconds.txt").exists():
        cpu = float((work / "cpu_seconds.txt").read_text())
        iterations = len(summary[0][2]) - 2  # the rows between the consensus and the true poses: the iterations made
        per = 1e3 * cpu / (n_particles * len(summary) * iterations)
        print(f"lorefine run: {cpu:.0f} CPU s (all ranks), {iterations} iterations, {per:.1f} ms per particle per module per iteration")


if __name__ == "__main__":
    sys.exit(main())
