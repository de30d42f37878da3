"""Does the PCA of the modules' relative motion find a motion along one known axis?

    python benchmarks/motion_axis.py [--work /tmp/motion_axis] [--particles 1000] [--snr 1.0] [--ranks 2] [--axis 0.3 -0.5 0.8]

Simulates a set whose modules both turn about one axis (simulate's motion.axis; angle ~ N(0, 3°) per module
and particle, shift N(0, 0.5 px) per axis, box 64, 4 Å/px), then the motion analysis of `lorefine refine`
(validation.motion) on (1) the true poses of the modules (gt_module_k.star) and (2) the poses lorefine
refine finds (one iteration, defaults, under mpiexec with --ranks ranks). Prints, for each, the angle
between the rotation part of the first principal component and the axis, and the variance it explains.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from lorefine_mpi.geometry import rotations  # noqa: E402
from lorefine_mpi.geometry.volumes import centre_of_mass_px  # noqa: E402
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star  # noqa: E402
from lorefine_mpi.simulate.dataset import simulate, simulate_config_from_dict  # noqa: E402
from lorefine_mpi.validation import motion  # noqa: E402


def first_component_angle(analysis, axis) -> float:
    rotation = analysis.components[:3, 0]
    cosine = abs(rotation @ axis) / np.linalg.norm(rotation)
    return float(np.rad2deg(np.arccos(min(1.0, cosine))))


def report(label, analysis, axis):
    print(f"{label:<34} PC1 rotation part vs the axis: {first_component_angle(analysis, axis):5.2f}°   variance explained "
          f"PC1 {100 * analysis.variance_explained[0]:5.1f} %, PC2 {100 * analysis.variance_explained[1]:5.1f} %")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/motion_axis")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--snr", type=float, default=1.0, help="SNR of the images (0: noise-free)")
    p.add_argument("--sigma-deg", type=float, default=3.0)
    p.add_argument("--axis", type=float, nargs=3, default=(0.3, -0.5, 0.8))
    p.add_argument("--ranks", type=int, default=2)
    args = p.parse_args()
    work = Path(args.work)
    data = work / "data"
    axis = np.asarray(args.axis) / np.linalg.norm(args.axis)
    if not (data / "particles.star").exists():
        cfg = {"output": str(data), "seed": 3, "n_particles": args.particles, "box": 64, "pixel_size_angstrom": 4.0,
               "noise": {"snr": args.snr or None},
               "motion": {"sigma_rot_deg": args.sigma_deg, "sigma_shift_px": 0.5, "axis": list(args.axis)}}
        simulate(simulate_config_from_dict(cfg, work))
    table = read_star(data / "particles.star")
    a0 = rotations.euler_to_matrix(table.rot_rad, table.tilt_rad, table.psi_rad)
    consensus, voxel = mrc.read_map(data / "consensus.mrc")
    masks = [mrc.read_map(data / f"mask_module_{k}.mrc")[0] for k in (1, 2)]
    centres = [centre_of_mass_px(consensus, m) for m in masks]
    truth = []
    for k in (1, 2):
        t = read_star(data / f"gt_module_{k}.star")
        truth.append((rotations.euler_to_matrix(t.rot_rad, t.tilt_rad, t.psi_rad), t.origin_px))
    print(f"{args.particles} particles, box 64, 4 Å/px, SNR {args.snr or 'noise-free'}; both modules turn about "
          f"({', '.join(f'{v:.3f}' for v in axis)}) by N(0, {args.sigma_deg:g}°), shift N(0, 0.5 px)")
    report("true poses", motion.analyse(["large", "small"], centres, a0, table.origin_px, truth, voxel), axis)
    config = yaml.safe_load((data / "lorefine.yaml").read_text())
    config |= {"output": str(work / "refined"), "postprocess": {"local_resolution": False, "motion_components": 1}}
    (data / "motion_axis.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if (work / "refined").exists():
        shutil.rmtree(work / "refined")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    done = subprocess.run([mpiexec, "-n", str(args.ranks), sys.executable, "-m", "mpi4py", "-m", "lorefine_mpi.cli.main", "refine",
                           str(data / "motion_axis.yaml")], capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-3000:])
        return done.returncode
    summary = json.loads((work / "refined" / "motion" / "motion.json").read_text())
    import h5py

    with h5py.File(work / "refined" / "results.h5", "r") as f:
        last = max(key for key in f if key.startswith("iteration_"))  # the poses of the last iteration, as motion.json's
        refined = [(f[f"{last}/{name}/matrix"][...], f[f"{last}/{name}/origin_px"][...]) for name in ("large", "small")]
    analysis = motion.analyse(["large", "small"], centres, a0, table.origin_px, refined, voxel)
    assert np.allclose(analysis.variance_explained, summary["pca"]["variance_explained"])  # what lorefine refine wrote
    report(f"lorefine refine ({args.ranks} ranks)", analysis, axis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
