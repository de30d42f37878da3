"""Pose accuracy on a noise-free set: the LO-refinement of the complex, and each module alone as the control.

    lorefine simulate configs/simulate_noisefree.yaml --output noisefree
    python benchmarks/noisefree_accuracy.py noisefree --work /tmp/nf_accuracy [--iterations 3] [--ranks 2]
        [--runs angle_refinement=quadratic,mean_motion=remove angle_refinement=none,mean_motion=keep]

Prints, per module, the fraction of particles whose refined pose lies within one grid step of the truth
(geodesic angle ≤ the angular step and origin error ≤ the shift step of the dataset's ``lorefine.yaml``)
and the median errors, for two kinds of run:

complex  ``lorefine refine`` of the simulated images with the dataset's consensus map and masks, one run
         of ``--iterations`` iterations per ``--runs`` item (search settings, KEY=VALUE joined by commas),
         every iteration reported (read from its results.h5). The paper's method: the first reference is
         the consensus map, blurred by the motion being refined, and the rest of the complex is removed
         at its preliminary pose.
alone    images of that module alone at its true pose, refined with its true map (``modules: whole``),
         once per angle refinement of the runs: the candidate set, the image turning and the score, free
         of the other module's motion.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import yaml

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star, write_star
from lorefine_mpi.projection import fourier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_groundtruth import pose_errors  # noqa: E402


def refine(config: dict, path: Path, ranks: int) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = ["lorefine", "refine", str(path)]
    if ranks > 1:
        command = ["mpiexec", "-n", str(ranks)] + command
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(path.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def module_alone(data: Path, k: int, work: Path, batch: int = 500) -> Path:
    """Images of ground-truth module k alone at its true poses; the STAR keeps the consensus poses."""
    truth = read_star(data / f"gt_module_{k}.star")
    consensus = read_star(data / "particles.star")
    volume, voxel = mrc.read_map(data / f"gt_module_{k}.mrc")
    fvol = fourier.prepare_volume(volume, 2)
    matrices = truth.matrices
    n, box = len(matrices), volume.shape[0]
    stack = work / f"alone_{k}.mrcs"
    with mrcfile.new(stack, overwrite=True) as f:
        f.set_data(np.zeros((n, box, box), np.float32))
        f.voxel_size = voxel
        for start in range(0, n, batch):
            rows = slice(start, min(start + batch, n))
            f.data[rows] = fourier.to_real(fourier.project(fvol, matrices[rows], truth.origin_px[rows]), box)
    star = work / f"alone_{k}.star"
    write_star(star, consensus, image_name=np.array([f"{i + 1:06d}@{stack.name}" for i in range(n)]))
    return star


def accuracy(star: Path, truth: Path, step_deg: float, step_px: float) -> str:
    return summary(*pose_errors(read_star(star), read_star(truth)), step_deg, step_px)


def stage_accuracy(results: Path, stage: str, truth: Path, step_deg: float, step_px: float) -> str:
    """The same figures for one stage of a run's results.h5 (poses in the consensus frame)."""
    table = read_star(truth)
    with h5py.File(results, "r") as f:
        found, origin = f[stage]["matrix"][...], f[stage]["origin_px"][...]
    expected = table.matrices
    angle = np.rad2deg(rotations.geodesic_angle(found, expected))
    return summary(angle, np.linalg.norm(origin - table.origin_px, axis=1), step_deg, step_px)


def summary(angle, shift, step_deg, step_px) -> str:
    within = np.mean((angle <= step_deg + 1e-6) & (shift <= step_px + 1e-6))
    return f"{100 * within:6.1f}%   median {np.median(angle):5.2f}° {np.median(shift):5.2f} px"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=["angle_refinement=quadratic"], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="search settings of each complex run")
    args = parser.parse_args(argv)
    runs = [dict((key, yaml.safe_load(value)) for key, value in (item.split("=", 1) for item in run.split(","))) for run in args.runs]
    data, work = args.dataset.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((data / "lorefine.yaml").read_text())
    step_deg, step_px = base["search"]["angular_step_deg"], base["search"]["shift_step_px"]
    names = [m["name"] for m in base["modules"]]
    before = {name: accuracy(data / "particles.star", data / f"gt_module_{k}.star", step_deg, step_px) for k, name in enumerate(names, 1)}
    width = max(40, max(len(item) for item in args.runs) + 14)
    lines = [f"{'run':{width}} {'module':6} within one step ({step_deg:g}°, {step_px:g} px)"]
    lines += [f"{'consensus poses':{width}} {name:6} {before[name]}" for name in names]
    for label, settings in zip(args.runs, runs):
        out = work / f"complex_{label.replace(',', '_').replace('=', '-')}"
        config = dict(base, particles=str(data / base["particles"]), consensus_map=str(data / base["consensus_map"]),
                      modules=[dict(m, mask=str(data / m["mask"])) for m in base["modules"]], iterations=args.iterations,
                      output=str(out), search=dict(base["search"], **settings))
        refine(config, out.with_suffix(".yaml"), args.ranks)
        for iteration in range(1, args.iterations + 1):
            lines += [f"{f'{label}, iteration {iteration}':{width}} {name:6} "
                      f"{stage_accuracy(out / 'results.h5', f'iteration_{iteration:02d}/{name}', data / f'gt_module_{k}.star', step_deg, step_px)}"
                      for k, name in enumerate(names, 1)]
    for refinement in dict.fromkeys(r.get("angle_refinement", "quadratic") for r in runs):
        for k, name in enumerate(names, 1):
            out = work / f"alone_{k}_{refinement}"
            config = dict(base, particles=str(module_alone(data, k, work)), consensus_map=str(data / f"gt_module_{k}.mrc"),
                          modules="whole", iterations=1, output=str(out), search=dict(base["search"], angle_refinement=refinement))
            refine(config, work / f"alone_{k}_{refinement}.yaml", args.ranks)
            lines.append(f"{f'module alone, true map, {refinement}':{width}} {name:6} "
                         f"{accuracy(out / 'whole' / 'particles.star', data / f'gt_module_{k}.star', step_deg, step_px)}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
