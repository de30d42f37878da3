"""lorefine side by side with RELION 3.1.3 multi-body refinement in the realistic regime (issue 27, item 6).

    python benchmarks/vs_relion/realistic.py --data DATASET --work DIR --particles N --steps prepare relion
    python benchmarks/vs_relion/realistic.py --data DATASET --work DIR --particles N --steps lorefine compare [--tag T]

DATASET is a `lorefine simulate` set with any number of modules (e.g. configs/simulate_realistic_seed1.yaml: box 128
at 1.5 Å/px, three modules, CTF, SNR 0.05). Steps (each skipped when its output exists):

1. prepare: DIR/data, a dataset folder of the first N particles: their STAR files (consensus and true module
   poses), links to the stack, the true module maps and the masks, the set's lorefine.yaml, and the consensus map
   rebuilt from those N particles (as `lorefine simulate` makes it), so that the room is measured on them.
2. relion: (a) a local auto-refine from the given poses (`--sigma_ang 1`, healpix order 4, 3 px / 1 px offsets),
   stopped after its first iteration: it is there for the optimiser file multi-body continues from; (b) multi-body
   refinement with RELION's defaults for that job (the GUI's: 1.8° initial sampling = healpix order 4 with
   oversampling 1, offset range 3 px in 0.75 px steps, subtracted bodies reconstructed), run until it stops by
   itself. The bodies are the set's soft module masks; each body rotates relative to the body whose mask it
   touches most; σ 10° on the rotations and 2 Å on the offsets (the RELION tutorial's example bodies file: 10° / 2
   for the well-defined core bodies). RELION 3.1.3 multiplies a continued multi-body run's --offset_range and
   --offset_step by the pixel size twice (shared/notes/relion-multibody.md), so 3 / 0.75 px are given as
   (3 / 0.75) / pixel size; check "offset range" in DIR/relion/mb.log. Every rank's CPU seconds are sampled
   from /proc into DIR/relion/cpu_log.tsv (a line a minute: time, stage, wall s, CPU s so far, pid:CPU s) and the
   totals per stage into DIR/relion/cpu.json. Run it under nohup and nice: it takes hours.
3. lorefine: `mpiexec -n 2 lorefine refine` with lorefine's defaults on DIR/data (benchmarks/accuracy.py's run,
   into DIR/lorefine_TAG), its CPU seconds (the whole job) into DIR/lorefine_TAG/cpu.json. Re-run with another
   --tag when lorefine changes.
4. compare: per module, against the true module map inside the module's mask, after moving each map by the
   rigid shift that maximises that masked correlation (RELION rounds body centres to whole pixels, so its body
   maps sit up to ~1.7 px off the consensus frame; every map gets the same treatment): the masked correlation
   of the consensus map, lorefine's map, RELION's body map (the mean of its two unfiltered half maps) and the
   map rebuilt from the true module poses (lorefine's reconstruction), the room closed, (x − consensus) /
   (true poses − consensus), the median angle and projected-centre errors of the poses, and the CPU seconds
   (RELION: local auto-refine + multi-body, all ranks; lorefine: the whole job). Then lorefine's and RELION's maps
   with the same filter, each from its own half maps: relion_postprocess's FSC weighting sqrt(2F / (1 + F)) with
   the mask-corrected FSC in the module's mask (RELION's reconstruction regularises its maps by its SSNR model,
   lorefine's map.mrc is not filtered, and the masked correlation rewards less noise as well as better poses).
"""

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import accuracy  # noqa: E402
from compare_groundtruth import masked_correlation, module_list  # noqa: E402
from relion_common import MPIRUN, body_module_poses, run_until, say  # noqa: E402

from lorefine_mpi.geometry import (
    rotations,  # noqa: E402
    volumes,  # noqa: E402
)
from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star, write_star  # noqa: E402
from lorefine_mpi.simulate.dataset import reconstruct_consensus  # noqa: E402
from lorefine_mpi.validation import (
    fsc,  # noqa: E402
    postprocess,  # noqa: E402
)

BODY_SIGMA_DEG, BODY_SIGMA_ANGSTROM = 10.0, 2.0  # the RELION tutorial's example bodies file
MB_OFFSET_RANGE_PX, MB_OFFSET_STEP_PX = 3.0, 0.75  # RELION's multi-body job defaults (GUI)
LOCAL_INI_HIGH_ANGSTROM = 8.0  # the consensus map low-passed for the local auto-refine's first iteration
MAX_RIGID_SHIFT_PX = 3


def prepare(data: Path, work: Path, n: int) -> Path:
    """work/data: the first n particles of ``data`` as a dataset folder (see the module docstring)."""
    sub = work / "data"
    if (sub / "consensus.mrc").exists():
        return sub
    sub.mkdir(parents=True, exist_ok=True)
    table = read_star(data / "particles.star")
    if n > len(table):
        raise SystemExit(f"--particles {n}: the set has only {len(table)}")
    links = ["particles.mrcs", "gt_whole.mrc", "mask_whole.mrc"]
    names = module_list(data)
    for _, k in names:
        links += [f"gt_module_{k}.mrc", f"mask_module_{k}.mrc"]
        write_star(sub / f"gt_module_{k}.star", read_star(data / f"gt_module_{k}.star").subset(np.arange(n)))
    for name in links:
        if not (sub / name).exists():
            os.symlink(data / name, sub / name)
    shutil.copy(data / "lorefine.yaml", sub / "lorefine.yaml")
    first = table.subset(np.arange(n))
    write_star(sub / "particles.star", first)
    box = mrc.read_map(data / "gt_module_1.mrc")[0].shape[0]
    consensus = reconstruct_consensus(read_star(sub / "particles.star"), box, use_ctf=first.has_ctf)
    (sub / "subset.yaml").write_text(yaml.safe_dump({"source": str(data), "first_particles": n}))
    mrc.write_map(sub / "consensus.mrc", consensus, float(first.pixel_size_angstrom()[0]))
    print(f"prepared {sub}: the first {n} particles of {data}", flush=True)
    return sub


def body_layout(sub: Path):
    """(mask paths, mask centres of mass (K, 3) px, rotate-relative-to 0-based indices): each body rotates
    relative to the body whose mask overlaps its own most."""
    names = module_list(sub)
    masks = [mrc.read_map(sub / f"mask_module_{k}.mrc")[0] for _, k in names]
    overlap = np.array([[float((a * b).sum()) if i != j else -1.0 for j, b in enumerate(masks)] for i, a in enumerate(masks)])
    return ([sub / f"mask_module_{k}.mrc" for _, k in names], np.array([volumes.centre_of_mass_px(m) for m in masks]),
            [int(i) for i in overlap.argmax(axis=1)])


def particle_diameter_angstrom(sub: Path, voxel: float) -> float:
    """The diameter of the circle that holds the whole soft mask of the complex, rounded up to 10 Å."""
    mask, _ = mrc.read_map(sub / "mask_whole.mrc")
    grid = np.indices(mask.shape) - mask.shape[0] // 2
    radius = np.sqrt((grid**2).sum(0))[mask > 0.01].max()
    return float(10 * np.ceil(2 * radius * voxel / 10))


def relion(sub: Path, work: Path, mb_iterations=None, body_sigma_deg=BODY_SIGMA_DEG,
           body_sigma_angstrom=BODY_SIGMA_ANGSTROM):
    """The local auto-refine (its first iteration), then multi-body until it stops by itself (or after
    ``mb_iterations`` iterations, for a timing)."""
    out = work / "relion"
    (out / "local").mkdir(parents=True, exist_ok=True)
    (out / "mb").mkdir(parents=True, exist_ok=True)
    figures = json.loads((out / "cpu.json").read_text()) if (out / "cpu.json").exists() else {}
    voxel = float(read_star(sub / "particles.star").pixel_size_angstrom()[0])
    cpu_log = out / "cpu_log.tsv"
    if "local" not in figures:
        diameter = particle_diameter_angstrom(sub, voxel)
        local = MPIRUN + ["relion_refine_mpi", "--i", "particles.star", "--o", str(out / "local/run"), "--ref", "consensus.mrc",
                          "--ini_high", f"{LOCAL_INI_HIGH_ANGSTROM:g}", "--auto_refine", "--split_random_halves", "--ctf",
                          "--healpix_order", "4", "--auto_local_healpix_order", "4", "--sigma_ang", "1", "--offset_range", "3",
                          "--offset_step", "1", "--particle_diameter", f"{diameter:g}", "--flatten_solvent", "--zero_mask",
                          "--pad", "2", "--sym", "C1", "--norm", "--scale", "--dont_combine_weights_via_disc", "--pool", "30",
                          "--preread_images", "--j", "1", "--random_seed", "1"]
        started = time.time()
        cpu, _ = run_until(local, sub, lambda: (out / "local/run_it001_optimiser.star").exists(), out / "local.log", cpu_log, "local")
        figures["local"] = cpu
        figures["local_wall_s"] = round(time.time() - started)
        (out / "cpu.json").write_text(json.dumps(figures))
    if "multibody" not in figures:
        masks, _, relative = body_layout(sub)
        lines = ["data_", "loop_", "_rlnBodyMaskName", "_rlnBodyRotateRelativeTo", "_rlnBodySigmaAngles", "_rlnBodySigmaOffsetAngst"]
        lines += [f"{m} {other + 1} {body_sigma_deg:g} {body_sigma_angstrom:g}" for m, other in zip(masks, relative)]
        (out / "bodies.star").write_text("\n".join(lines) + "\n")
        mb = MPIRUN + ["relion_refine_mpi", "--continue", str(out / "local/run_it001_optimiser.star"), "--o", str(out / "mb/run"),
                       "--solvent_correct_fsc", "--multibody_masks", str(out / "bodies.star"), "--oversampling", "1",
                       "--healpix_order", "4", "--auto_local_healpix_order", "4",
                       "--offset_range", f"{MB_OFFSET_RANGE_PX / voxel:g}", "--offset_step", f"{MB_OFFSET_STEP_PX / voxel:g}",
                       "--reconstruct_subtracted_bodies", "--dont_combine_weights_via_disc", "--pool", "30", "--preread_images",
                       "--j", "1"]
        if mb_iterations:
            done = lambda: (out / f"mb/run_it{mb_iterations:03d}_optimiser.star").exists()  # noqa: E731
        else:
            done = lambda: False  # noqa: E731
        started = time.time()
        cpu, status = run_until(mb, sub, done, out / "mb.log", cpu_log, "multibody")
        figures["multibody"] = cpu
        figures["multibody_wall_s"] = round(time.time() - started)
        figures["multibody_exit_status"] = status
        figures["multibody_iterations"] = len(list((out / "mb").glob("run_it[0-9][0-9][0-9]_optimiser.star"))) - 1
        (out / "cpu.json").write_text(json.dumps(figures))
    print(f"RELION CPU s: local auto-refine {figures['local']:.0f}, multi-body {figures['multibody']:.0f} "
          f"({figures.get('multibody_iterations')} iterations, exit status {figures.get('multibody_exit_status')})", flush=True)
    return figures


def lorefine(sub: Path, work: Path, tag: str):
    out = work / f"lorefine_{tag}"
    if (out / "cpu.json").exists():
        return json.loads((out / "cpu.json").read_text())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    accuracy.run_lorefine(sub, out, accuracy.DEFAULT_ITERATIONS, 2, {})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {"cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
    (out / "cpu.json").write_text(json.dumps(figures))
    return figures


def shift_volume(volume, shift_px):
    """The volume moved by ``shift_px`` (xyz px, sub-pixel; periodic): V'(r) = V(r − s)."""
    n = volume.shape[0]
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(n), indexing="ij")
    ramp = np.exp(-2j * np.pi * (kx * shift_px[0] + ky * shift_px[1] + kz * shift_px[2]))
    return np.fft.irfftn(np.fft.rfftn(volume) * ramp, s=volume.shape, axes=(0, 1, 2))


def best_shift_correlation(volume, truth, mask, max_shift_px=MAX_RIGID_SHIFT_PX):
    """(masked correlation, shift xyz px) of ``volume`` moved by the rigid shift that maximises its masked
    correlation with ``truth`` (compare_groundtruth.masked_correlation): every whole-pixel shift within
    ±max_shift_px at once (the correlation's three sums as FFT cross-correlations), then sub-pixel refinement."""
    from scipy.optimize import minimize

    v = np.asarray(volume, dtype=np.float64)
    w = np.asarray(mask, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    t = w * (t - (w * t).sum() / w.sum())  # w·(T − mean): sums to 0, so the mean of V drops out of the numerator
    spectrum = np.fft.rfftn(v)

    def correlate(a_spectrum, b):  # c[s] = Σ_r a(r − s) b(r)
        return np.fft.irfftn(np.conj(a_spectrum) * np.fft.rfftn(b), s=v.shape, axes=(0, 1, 2))

    numerator = correlate(spectrum, t)
    sum_v = correlate(spectrum, w)
    sum_v2 = correlate(np.fft.rfftn(v * v), w)
    denominator = np.sqrt(np.maximum(sum_v2 - sum_v**2 / w.sum(), 1e-30) * (t * t / np.maximum(w, 1e-30)).sum())
    cc = numerator / denominator
    n = v.shape[0]
    wrapped = (np.indices(v.shape) + n // 2) % n - n // 2  # [z, y, x] shifts of each index
    inside = (np.abs(wrapped) <= max_shift_px).all(axis=0)
    z, y, x = (wrapped[a][inside][np.argmax(cc[inside])] for a in range(3))
    start = np.array([x, y, z], dtype=np.float64)
    result = minimize(lambda s: -masked_correlation(shift_volume(v, s), truth, mask), start, method="Nelder-Mead",
                      options={"xatol": 0.02, "fatol": 1e-6, "initial_simplex": start + np.vstack([np.zeros(3), 0.5 * np.eye(3)])})
    return (-float(result.fun), result.x) if -result.fun >= cc[z, y, x] else (float(cc[z, y, x]), start)


def fsc_weighted_map(half1, half2, mask, voxel: float):
    """The mean of two half maps weighted per shell by sqrt(2F / (1 + F)), F their mask-corrected FSC in ``mask``
    (relion_postprocess's FSC weighting, `validation.postprocess.fsc_weighted`, with no B-factor and no low-pass):
    what either program's half maps give when the same filter, made from their own FSC, is applied to both."""
    n = half1.shape[0]
    spectrum = postprocess.fsc_weighted(np.fft.rfftn(0.5 * (half1 + half2)), fsc.fsc(half1, half2, voxel, mask=mask).fsc, fsc.shell_index(n), n)
    return np.fft.irfftn(spectrum, s=half1.shape, axes=(0, 1, 2))


def relion_half_maps(work: Path, k: int):
    """RELION's two half maps of body k (the final unfiltered ones; while the run has not finished, the last
    iteration's unfiltered ones), and the name of what was read; (None, None) before its first iteration."""
    mb = work / "relion" / "mb"
    final = [mb / f"run_half{h}_body{k:03d}_unfil.mrc" for h in (1, 2)]
    if all(p.exists() for p in final):
        return [mrc.read_map(p)[0] for p in final], "final"
    iterations = sorted(mb.glob(f"run_it[0-9][0-9][0-9]_half2_body{k:03d}_unfil.mrc"))
    if not iterations:
        return None, None
    last = iterations[-1].name.split("_")[1]
    return [mrc.read_map(mb / f"run_{last}_half{h}_body{k:03d}_unfil.mrc")[0] for h in (1, 2)], last


def relion_body_maps(work: Path, k: int):
    """RELION's map of body k: the mean of its two unfiltered half maps (`relion_half_maps`), and the name of what
    was read."""
    halves, label = relion_half_maps(work, k)
    return (None, None) if halves is None else (0.5 * (halves[0] + halves[1]), label)


def relion_module_tables(sub: Path, work: Path):
    """RELION's per-module poses (the last multi-body data STAR) as STAR files DIR/relion/relion_module_K.star."""
    mb = work / "relion" / "mb"
    data_star = mb / "run_data.star" if (mb / "run_data.star").exists() else max(mb.glob("run_it[0-9][0-9][0-9]_data.star"), default=None)
    if data_star is None:
        return None, None
    label = "final" if data_star.name == "run_data.star" else data_star.name.split("_")[1]
    consensus = read_star(sub / "particles.star")
    _, coms, relative = body_layout(sub)
    tables = []
    for k, (matrices, origin) in enumerate(body_module_poses(data_star, coms, relative, consensus.pixel_size_angstrom()[0]), 1):
        rot, tilt, psi = rotations.matrix_to_euler(matrices)
        path = work / "relion" / f"relion_module_{k}_{label}.star"
        write_star(path, consensus, rot_rad=rot, tilt_rad=tilt, psi_rad=psi, origin_px=origin)
        tables.append(read_star(path, project_dir=sub))  # image names as in sub/particles.star
    return tables, label


def compare(sub: Path, work: Path, tag: str):
    consensus_table = read_star(sub / "particles.star")
    consensus_map, voxel = mrc.read_map(sub / "consensus.mrc")
    box = consensus_map.shape[0]
    relion_cpu = json.loads((work / "relion" / "cpu.json").read_text()) if (work / "relion" / "cpu.json").exists() else {}
    lorefine_cpu = json.loads((work / f"lorefine_{tag}" / "cpu.json").read_text()) if (work / f"lorefine_{tag}" / "cpu.json").exists() else {}
    relion_tables, poses_label = relion_module_tables(sub, work)
    run = work / f"lorefine_{tag}" / "run"
    print(f"\n{len(consensus_table)} particles (the first of {yaml.safe_load((sub / 'subset.yaml').read_text())['source']}), "
          f"box {box}, {voxel:g} Å/px; against the true module map inside its mask, each map moved by its best rigid shift")
    relion_total = relion_cpu.get("local", 0.0) + relion_cpu.get("multibody", 0.0)
    print(f"CPU s: RELION {relion_total:.0f} (local auto-refine {relion_cpu.get('local', float('nan')):.0f} + multi-body "
          f"{relion_cpu.get('multibody', float('nan')):.0f}, {relion_cpu.get('multibody_iterations')} iterations); "
          f"lorefine ({tag}) {lorefine_cpu.get('cpu_seconds', float('nan')):.0f}")
    print(f"{'module':8} {'map':42} {'masked corr':>11} {'as is':>7} {'shift px':>17} {'room':>7} {'angle':>7} {'centre':>7}")
    for index, (name, k) in enumerate(module_list(sub)):
        truth_map, mask, truth, centre = accuracy.module_truth(sub, k)
        ceiling = accuracy.ceiling_map(sub, k, work / "ceiling", box)
        relion_map, relion_label = relion_body_maps(work, k)
        rows = [("consensus", consensus_map, consensus_table), ("true poses (ceiling)", ceiling, truth)]
        if (run / name / "map.mrc").exists():
            rows.append((f"lorefine ({tag})", mrc.read_map(run / name / "map.mrc")[0], read_star(run / name / "particles.star")))
        if relion_map is not None:
            rows.append((f"RELION multi-body ({relion_label})", relion_map, relion_tables[index] if relion_tables else None))
        if relion_tables:  # RELION's module poses through lorefine's reconstruction: the poses alone compared
            rebuilt = work / "relion" / f"relion_module_{k}_{poses_label}_rebuilt.mrc"
            if not rebuilt.exists():
                mrc.write_map(rebuilt, accuracy.rebuilt_map(relion_tables[index], box), voxel)
            rows.append((f"RELION poses ({poses_label}), lorefine rec.", mrc.read_map(rebuilt)[0], relion_tables[index]))
        figures = [(label, best_shift_correlation(volume, truth_map, mask), masked_correlation(volume, truth_map, mask), table)
                   for label, volume, table in rows]
        low, high = figures[0][1][0], figures[1][1][0]
        for label, (corr, shift), as_is, table in figures:
            poses = accuracy.pose_errors(table, truth, centre) if table is not None else None
            pose_text = "" if poses is None else f"{poses[0]:6.2f}° {poses[2]:5.2f}px"
            room = 100 * (corr - low) / (high - low)
            print(f"{name:8} {label:42} {corr:11.4f} {as_is:7.4f} {np.array2string(shift, precision=2, sign=' '):>17} "
                  f"{room:6.1f}% {pose_text}")
        if relion_map is not None and relion_tables:  # the body poses' composition checked against RELION's own map
            print(f"{name:8} (RELION's body map vs its poses rebuilt: masked corr. {masked_correlation(rows[-1][1], relion_map, mask):.4f})")
        # RELION's reconstruction regularises its maps (its SSNR model); lorefine's map.mrc is not filtered. The same
        # filter on both, each from its own half maps and the module's mask: relion_postprocess's FSC weighting.
        weighted = []
        if (run / name / "half1.mrc").exists():
            halves = [mrc.read_map(run / name / f"half{h}.mrc")[0] for h in (1, 2)]
            weighted.append((f"lorefine ({tag})", fsc_weighted_map(*halves, mask, voxel)))
        relion_halves, relion_half_label = relion_half_maps(work, k)
        if relion_halves is not None:
            weighted.append((f"RELION multi-body ({relion_half_label})", fsc_weighted_map(*relion_halves, mask, voxel)))
        for label, volume in weighted:
            corr, shift = best_shift_correlation(volume, truth_map, mask)
            print(f"{name:8} {label + ', FSC-weighted':42} {corr:11.4f} {masked_correlation(volume, truth_map, mask):7.4f} "
                  f"{np.array2string(shift, precision=2, sign=' '):>17}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a lorefine simulate set (e.g. /work/data/realistic_seed1)")
    p.add_argument("--work", required=True)
    p.add_argument("--particles", type=int, required=True, help="use the first N particles")
    p.add_argument("--steps", nargs="+", default=["prepare", "relion", "lorefine", "compare"],
                   choices=["prepare", "relion", "lorefine", "compare"])
    p.add_argument("--tag", default="defaults", help="name of the lorefine run (DIR/lorefine_TAG)")
    p.add_argument("--mb-iterations", type=int, help="stop multi-body after this many iterations (a timing; default: "
                   "until it stops by itself)")
    p.add_argument("--body-sigma-deg", type=float, default=BODY_SIGMA_DEG,
                   help=f"every body's rlnBodySigmaAngles (default {BODY_SIGMA_DEG:g}: the RELION tutorial's example)")
    p.add_argument("--body-sigma-angstrom", type=float, default=BODY_SIGMA_ANGSTROM,
                   help=f"every body's rlnBodySigmaOffsetAngst (default {BODY_SIGMA_ANGSTROM:g})")
    args = p.parse_args(argv)
    data, work = Path(args.data).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    say([sys.executable, *sys.argv], os.getcwd())
    sub = prepare(data, work, args.particles)
    if "relion" in args.steps:
        relion(sub, work, args.mb_iterations, args.body_sigma_deg, args.body_sigma_angstrom)
    if "lorefine" in args.steps:
        figures = lorefine(sub, work, args.tag)
        print(f"lorefine ({args.tag}): {figures['cpu_seconds']:.0f} CPU s", flush=True)
    if "compare" in args.steps:
        compare(sub, work, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
