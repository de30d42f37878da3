"""lorefine side by side with RELION 3.1.3 multi-body refinement on one simulated set and the same cores.

    python benchmarks/vs_relion/run.py --work DIR [--particles 5000] [--steps simulate relion lorefine compare]

1. simulate: `lorefine simulate` with the paper's protocol (box 64, 4 Å/px, SNR 0.25, each module turned by
   N(0, 1.67°) about a random axis and shifted by N(0, 1 px) per axis; the consensus poses given);
2. relion: a short local auto-refine from the given poses to get an optimiser file (stopped after its first
   iteration), then one iteration of `relion_refine_mpi --continue … --multibody_masks bodies.star`
   (`shared/notes/relion-multibody.md`: RELION 3.1.3 scales --offset_range/--offset_step by the pixel size
   twice when a multi-body run continues, so 3 px / 1 px at 4 Å/px are given as 0.75 / 0.25); the CPU time of
   every rank is sampled from /proc; each body's poses are composed into per-module poses (as
   ml_optimiser.cpp does) and rebuilt with `relion_reconstruct`;
3. lorefine: `mpiexec -n 2 lorefine refine` with its defaults (CPU time of the whole job);
4. compare: per module, the CPU seconds and, against the ground-truth module map inside the module's mask,
   FSC 0.5 and the masked correlation of: the consensus map, RELION's body map, RELION's poses rebuilt,
   lorefine's map, and the map rebuilt from the true module poses (the ceiling).

Every command run is printed. RELION (apt-get install relion) uses /usr/bin/mpirun (Open MPI).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_groundtruth import masked_correlation  # noqa: E402
from relion_common import MPIRUN, body_module_poses, run_until, say  # noqa: E402

from lorefine_mpi.geometry import (
    rotations,  # noqa: E402
    volumes,  # noqa: E402
)
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star, write_star  # noqa: E402
from lorefine_mpi.validation import fsc  # noqa: E402

BODY_SIGMA_DEG, BODY_SIGMA_ANGSTROM = 2.0, 4.0  # the bodies' priors: about the simulated motion (1.67°, 1 px = 4 Å)


def simulate(work, n):
    data = work / "data"
    if (data / "particles.star").exists():
        return data
    config = {"output": str(data), "seed": 21, "n_particles": n, "box": 64, "pixel_size_angstrom": 4.0, "origin_sigma_px": 2.0,
              "source": "phantom", "phantom": {"seed": 11}, "motion": {"sigma_rot_deg": 1.67, "sigma_shift_px": 1.0},
              "noise": {"snr": 0.25}}
    (work / "simulate.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "lorefine_mpi.cli.main", "simulate", str(work / "simulate.yaml")]
    say(command, work)
    subprocess.run(command, check=True)
    return data


def relion(work, data):
    out = work / "relion"
    (out / "local").mkdir(parents=True, exist_ok=True)
    (out / "mb").mkdir(parents=True, exist_ok=True)
    figures = json.loads((out / "cpu.json").read_text()) if (out / "cpu.json").exists() else {}
    if "local" not in figures:
        local = MPIRUN + ["relion_refine_mpi", "--i", "particles.star", "--o", str(out / "local/run"), "--ref", "consensus.mrc",
                          "--ini_high", "15", "--auto_refine", "--split_random_halves", "--healpix_order", "4",
                          "--auto_local_healpix_order", "4", "--sigma_ang", "1", "--offset_range", "3", "--offset_step", "1",
                          "--particle_diameter", "224", "--flatten_solvent", "--zero_mask", "--pad", "2", "--sym", "C1", "--norm",
                          "--scale", "--dont_combine_weights_via_disc", "--pool", "30", "--preread_images", "--j", "1",
                          "--random_seed", "1"]
        figures["local"] = run_until(local, data, lambda: (out / "local/run_it001_optimiser.star").exists(), out / "local.log")[0]
        (out / "cpu.json").write_text(json.dumps(figures))
    if "multibody" not in figures:
        masks = [data / "mask_module_1.mrc", data / "mask_module_2.mrc"]
        lines = ["data_", "loop_", "_rlnBodyMaskName", "_rlnBodyRotateRelativeTo", "_rlnBodySigmaAngles", "_rlnBodySigmaOffsetAngst"]
        lines += [f"{m} {2 - k} {BODY_SIGMA_DEG} {BODY_SIGMA_ANGSTROM}" for k, m in enumerate(masks)]
        (out / "bodies.star").write_text("\n".join(lines) + "\n")
        mb = MPIRUN + ["relion_refine_mpi", "--continue", str(out / "local/run_it001_optimiser.star"), "--o", str(out / "mb/run"),
                       "--solvent_correct_fsc", "--multibody_masks", str(out / "bodies.star"), "--oversampling", "1",
                       "--healpix_order", "4", "--auto_local_healpix_order", "4", "--offset_range", "0.75", "--offset_step", "0.25",
                       "--reconstruct_subtracted_bodies", "--dont_combine_weights_via_disc", "--pool", "30", "--preread_images", "--j", "1"]
        # a continued run writes its starting point as it000 at once; its first iteration ends with it001's optimiser
        figures["multibody"] = run_until(mb, data, lambda: (out / "mb/run_it001_optimiser.star").exists(), out / "mb.log")[0]
        (out / "cpu.json").write_text(json.dumps(figures))
    return figures


def body_poses(work, data):
    """Each body's poses (RELION's data_images_body_K blocks) as per-module particle poses, in STAR files
    beside RELION's output, and the rebuilt maps (relion_reconstruct)."""
    out = work / "relion"
    data_star = out / "mb/run_it001_data.star"
    consensus = read_star(data / "particles.star")
    voxel = consensus.pixel_size_angstrom()[0]
    masks = [mrc.read_map(data / f"mask_module_{k}.mrc")[0] for k in (1, 2)]
    coms = np.array([volumes.centre_of_mass_px(m) for m in masks])  # RELION rounds them to whole px
    names = {}
    for k, (a_body, o_body) in enumerate(body_module_poses(data_star, coms, [1, 0], voxel), 1):
        rot, tilt, psi = rotations.matrix_to_euler(a_body)
        names[k] = out / f"relion_module_{k}.star"
        write_star(names[k], consensus, rot_rad=rot, tilt_rad=tilt, psi_rad=psi, origin_px=o_body)
        command = ["relion_reconstruct", "--i", str(names[k]), "--o", str(out / f"relion_module_{k}.mrc")]
        say(command, data)
        subprocess.run(command, cwd=data, check=True, capture_output=True)
    return names


def lorefine(work, data):
    out = work / "lorefine"
    if (out / "figures.json").exists():
        return json.loads((out / "figures.json").read_text())
    config = {"particles": str(data / "particles.star"), "consensus_map": str(data / "consensus.mrc"),
              "modules": [{"name": "large", "mask": str(data / "mask_module_1.mrc")}, {"name": "small", "mask": str(data / "mask_module_2.mrc")}],
              "output": str(out / "run"), "seed": 1}
    out.mkdir(parents=True, exist_ok=True)
    (out / "lorefine.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    command = [mpiexec, "-n", "2", str(Path(sys.executable).parent / "lorefine"), "refine", str(out / "lorefine.yaml")]
    say(command, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen(command, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(child.stderr.read().decode()[-2000:])
    figures = {"cpu_seconds": usage.ru_utime + usage.ru_stime}
    (out / "figures.json").write_text(json.dumps(figures))
    return figures


def ceiling(work, data):
    """Maps rebuilt from the true module poses (lorefine reconstruct), the best any method's poses can give."""
    paths = {}
    for k in (1, 2):
        paths[k] = work / f"truth_module_{k}.mrc"
        if not paths[k].exists():
            command = [sys.executable, "-m", "lorefine_mpi.cli.main", "reconstruct", "--particles", str(data / f"gt_module_{k}.star"),
                       "--out", str(paths[k])]
            say(command, data)
            subprocess.run(command, cwd=data, check=True, capture_output=True)
    return paths


def compare(work, data, relion_cpu, lorefine_figures):
    voxel = read_star(data / "particles.star").pixel_size_angstrom()[0]
    truth_maps = ceiling(work, data)
    relion_mb = work / "relion" / "mb"
    last = "run_it001"
    print(f"\n{len(read_star(data / 'particles.star'))} particles of 64² at 4 Å/px, SNR 0.25, the paper's motion; against the "
          "ground-truth module map inside the module's mask")
    print(f"CPU seconds: RELION local auto-refine (one iteration, for the optimiser file) {relion_cpu['local']:.0f}, "
          f"RELION multi-body (one iteration, both bodies) {relion_cpu['multibody']:.0f}; lorefine (whole run, both modules) "
          f"{lorefine_figures['cpu_seconds']:.0f}")
    print(f"{'module':7} {'map':32} {'CPU s':>8} {'FSC 0.5':>9} {'masked corr.':>13}")
    for k, name in ((1, "large"), (2, "small")):
        gt, _ = mrc.read_map(data / f"gt_module_{k}.mrc")
        mask, _ = mrc.read_map(data / f"mask_module_{k}.mrc")
        halves = [mrc.read_map(relion_mb / f"{last}_half{h}_body{k:03d}.mrc")[0] for h in (1, 2)]
        rows = [
            ("consensus", mrc.read_map(data / "consensus.mrc")[0], None),
            ("RELION multi-body body map", 0.5 * (halves[0] + halves[1]), relion_cpu["multibody"] / 2),
            ("RELION poses, relion_reconstruct", mrc.read_map(work / "relion" / f"relion_module_{k}.mrc")[0], None),
            ("lorefine", mrc.read_map(work / "lorefine" / "run" / name / "map.mrc")[0], lorefine_figures["cpu_seconds"] / 2),
            ("true poses (ceiling)", mrc.read_map(truth_maps[k])[0], None),
        ]
        for label, volume, cpu in rows:
            resolution = fsc.resolution_at(fsc.fsc(volume * mask, gt * mask, voxel), 0.5)
            cpu_text = "" if cpu is None else f"{cpu:.0f}"
            print(f"{name:7} {label:32} {cpu_text:>8} {resolution:8.2f}Å {masked_correlation(volume, gt, mask):13.4f}")
        # the composition of the body poses checked: their map against RELION's own body map
        print(f"{name:7} (RELION's poses rebuilt vs RELION's body map: masked corr. {masked_correlation(rows[2][1], rows[1][1], mask):.4f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--particles", type=int, default=5000)
    p.add_argument("--steps", nargs="+", default=["simulate", "relion", "lorefine", "compare"])
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = simulate(work, args.particles)
    relion_cpu = lorefine_figures = None
    if "relion" in args.steps or "compare" in args.steps:
        relion_cpu = relion(work, data)
        if not (work / "relion" / "relion_module_2.mrc").exists():
            body_poses(work, data)
    if "lorefine" in args.steps or "compare" in args.steps:
        lorefine_figures = lorefine(work, data)
    if "compare" in args.steps:
        compare(work, data, relion_cpu, lorefine_figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
