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
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compare_groundtruth import masked_correlation  # noqa: E402

from lorefine_mpi.geometry import rotations  # noqa: E402
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import parse_star, read_star, write_star  # noqa: E402
from lorefine_mpi.geometry import volumes  # noqa: E402
from lorefine_mpi.validation import fsc  # noqa: E402

MPIRUN = ["/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "3"]
BODY_SIGMA_DEG, BODY_SIGMA_ANGSTROM = 2.0, 4.0  # the bodies' priors: about the simulated motion (1.67°, 1 px = 4 Å)


def say(command, cwd):
    print(f"$ (cd {cwd} && {shlex.join(str(c) for c in command)})", flush=True)


def process_cpu_seconds(pids):
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total


def descendants(pid):
    out = []
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if int(Path(child, "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(child.name))
        except (FileNotFoundError, ValueError, IndexError):
            pass
    return out + [d for c in out for d in descendants(c)]


def run_until(command, cwd, done, log_path):
    """Run until ``done()`` is true (then stop the job) or it exits; its CPU seconds, summed over every
    process of the job, sampled from /proc every few seconds."""
    say(command, cwd)
    with open(log_path, "a") as log:
        job = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        seen = {}
        while job.poll() is None and not done():
            for pid in [job.pid] + descendants(job.pid):
                seen[pid] = max(seen.get(pid, 0.0), process_cpu_seconds([pid]))
            time.sleep(5)
        if job.poll() is None:
            time.sleep(20)  # let the iteration's files be written completely
            for pid in [job.pid] + descendants(job.pid):
                seen[pid] = max(seen.get(pid, 0.0), process_cpu_seconds([pid]))
            os.killpg(job.pid, signal.SIGTERM)
            job.wait()
    return sum(seen.values())


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
        figures["local"] = run_until(local, data, lambda: (out / "local/run_it001_optimiser.star").exists(), out / "local.log")
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
        figures["multibody"] = run_until(mb, data, lambda: (out / "mb/run_it001_optimiser.star").exists(), out / "mb.log")
        (out / "cpu.json").write_text(json.dumps(figures))
    return figures


def align_with_z(axis):
    """RELION's alignWithZ: the rotation taking the unit vector ``axis`` to z."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    proj = np.hypot(y, z)
    if proj < 1e-6:
        return np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    return np.array([[proj, -x * y / proj, -x * z / proj], [0.0, z / proj, -y / proj], [x, y, z]])


def body_poses(work, data):
    """Each body's poses (RELION's data_images_body_K blocks) as per-module particle poses, in STAR files
    beside RELION's output, and the rebuilt maps (relion_reconstruct)."""
    out = work / "relion"
    data_star = out / "mb/run_it001_data.star"
    blocks = parse_star(data_star)
    consensus = read_star(data / "particles.star")
    voxel = consensus.pixel_size_angstrom()[0]
    masks = [mrc.read_map(data / f"mask_module_{k}.mrc")[0] for k in (1, 2)]
    coms = [np.rint(volumes.centre_of_mass_px(m)) for m in masks]  # RELION: the mask's centre of mass, whole px
    def pose_columns(block):
        columns, rows = blocks[block]
        get = lambda name: np.array([float(r[columns.index(name)]) for r in rows])  # noqa: E731
        matrices = rotations.euler_to_matrix(*(np.deg2rad(get(c)) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
        return matrices, np.stack([get("rlnOriginXAngst"), get("rlnOriginYAngst")], -1) / voxel

    # the poses the bodies move from: the multi-body run's own particle poses (those of the local auto-refine it
    # continues, not the simulation's consensus poses)
    a, origin = pose_columns("particles")
    names = {}
    for k in (1, 2):
        a_resi, s_body = pose_columns(f"images_body_{k}")
        com, other = coms[k - 1], coms[2 - k]
        o_align = align_with_z(-(other - com))
        r = rotations.euler_to_matrix(0.0, np.deg2rad(-90.0), 0.0)
        a_body = a @ o_align.T @ r @ a_resi @ o_align
        o_body = np.rint(origin - np.einsum("nij,j->ni", a, com)[:, :2]) + s_body + np.einsum("nij,j->ni", a_body, com)[:, :2]
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
