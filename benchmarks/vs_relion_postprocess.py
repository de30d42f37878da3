"""lorefine postprocess against relion_postprocess (RELION 3.1.3) on the same half maps and masks: the resolution and
the B-factor, on half-map pairs of different resolutions.

    python benchmarks/vs_relion_postprocess.py [--work /tmp/vs_relion_pp] [--seeds 0] [--particles 2000]

Cases:
  * RELION's fixture recon_ctf (tests/data: 600 noise-free CTF images, box 48, 4 Å/px) split by rlnRandomSubset,
    reconstructed by lorefine; each module's mask. Noise-free: the unmasked FSC never drops below 0.8,
    so both programs randomise the phases from 20 Å (--randomize_at_A 20);
  * a noisy simulated set (`lorefine simulate`: 2,000 particles, box 64, 2 Å/px, SNR 0.05, the paper's
    motion), half maps from the true poses of module 1 and from the consensus poses, and from the consensus poses
    of the first 300 particles only (a low-resolution pair); each module's mask.
Per case: the corrected masked FSC 0.143 resolution of both (Å and shell); lorefine's B-factor (its default: the
Guinier fit from 10 Å to the resolution, no B-factor with fewer than MIN_FIT_SHELLS shells) with its shell count,
RELION's B with the same range (--autob_highres at the resolution), RELION's B with its own default range (10 Å to
where the FSC weighting ends, --autob_highres 0) and lorefine's with that range (--autob-highres 0); lorefine's
warning. With --seeds N, both programs' B with RELION's default range over 1 + N phase randomisations (their
defaults and seeds 1 … N). Skipped (with a message) without relion_postprocess.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lorefine_mpi.io import mrc  # noqa: E402
from lorefine_mpi.io.star import read_star, write_star  # noqa: E402
from lorefine_mpi.projection.source import ParticleSource  # noqa: E402
from lorefine_mpi.reconstruction.reconstruct import backproject_halves, maps_from_halves  # noqa: E402
from lorefine_mpi.simulate.dataset import simulate, simulate_config_from_dict  # noqa: E402
from lorefine_mpi.validation import postprocess as pp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data"  # RELION-made
SIMULATION = {"seed": 5, "n_particles": 2000, "box": 64, "pixel_size_angstrom": 2.0, "noise": {"snr": 0.05}}


def halves_of(star, folder, name):
    table = read_star(star)
    box = mrc.stack_shape(table.stack_path[0])[-1]
    voxel = float(table.pixel_size_angstrom()[0])
    maps = maps_from_halves(backproject_halves(ParticleSource(table, box, table.has_ctf), np.arange(len(table))))
    paths = []
    for h in ("half1", "half2"):
        paths.append(folder / f"{name}_{h}.mrc")
        mrc.write_map(paths[-1], maps[h], voxel)
    return paths, voxel


def relion(h1, h2, mask, voxel, out, seed=None, randomise=None, highres=None):
    """(resolution Å, B Å², {column: curve}) of relion_postprocess --auto_bfac."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["relion_postprocess", "--i", str(h1), "--i2", str(h2), "--mask", str(mask), "--angpix", str(voxel), "--auto_bfac",
               "--o", str(out)]
    command += ["--random_seed", str(seed)] if seed is not None else []
    command += ["--randomize_at_A", str(randomise)] if randomise else []
    command += ["--autob_highres", f"{highres:.6f}"] if highres else []
    subprocess.run(command, capture_output=True, text=True)  # it exits 1 at the very end without ghostscript (PDF); the STAR is written
    general, columns, rows, block = {}, [], [], None
    for line in Path(f"{out}.star").read_text().splitlines():
        text = line.strip()
        if text.startswith("data_"):
            block = text
        elif block == "data_general" and text.startswith("_rln") and len(text.split()) == 2:
            general[text.split()[0]] = text.split()[1]
        elif block == "data_fsc" and text.startswith("_rln"):
            columns.append(text.split()[0])
        elif block == "data_fsc" and text and text[0] in "-0123456789":
            rows.append([float(v) for v in text.split()])
    table = np.array(rows)
    return float(general["_rlnFinalResolution"]), float(general["_rlnBfactorUsedForSharpening"]), {c: table[:, i] for i, c in enumerate(columns)}


HEADER = (f"{'case':<38} {'lorefine (shell)':>16} {'RELION (shell)':>15}  {'B lorefine (shells)':>19} {'B RELION same range':>19}  "
          f"{'B RELION default':>16} {'B lorefine, that range':>22}")


def compare(label, h1, h2, mask, voxel, work, seeds, randomise=None):
    a, b, m = (mrc.read_map(p)[0] for p in (h1, h2, mask))
    n = a.shape[0]
    ours = pp.postprocess(a, b, m, voxel, randomise_from_angstrom=randomise)
    ours_relion_range = pp.postprocess(a, b, m, voxel, randomise_from_angstrom=randomise, fit_highres_angstrom=0.0)
    name = label.replace(" ", "_").replace(",", "")
    res, bfactor, _ = relion(h1, h2, mask, voxel, work / "relion" / name, randomise=randomise)
    _, same_range, _ = relion(h1, h2, mask, voxel, work / "relion_same_range" / name, randomise=randomise, highres=ours.resolution_angstrom)
    shell = round(n * voxel / res)
    b_ours = "not estimated" if ours.bfactor_source == "not estimated" else f"{ours.bfactor_angstrom2:.1f}"
    print(f"{label:<38} {ours.resolution_angstrom:6.2f} Å ({ours.resolution_shell:2d}) {res:6.2f} Å ({shell:2d})  "
          f"{b_ours:>14} ({ours.guinier.fit_points:2d}) {same_range:19.1f}  {bfactor:16.1f} {ours_relion_range.bfactor_angstrom2:22.1f}")
    for warning in ours.warnings:
        print(f"{'':<38} lorefine: warning: {warning}")
    if seeds:
        def spread(values):
            return f"{min(values):.0f} to {max(values):.0f}"

        others = range(1, seeds + 1)
        mine = [ours.bfactor_angstrom2] + [pp.postprocess(a, b, m, voxel, seed=s, randomise_from_angstrom=randomise).bfactor_angstrom2
                                           for s in others]
        theirs = [same_range] + [relion(h1, h2, mask, voxel, work / "relion_same_range_seeds" / f"{name}_{s}", seed=s, randomise=randomise,
                                        highres=ours.resolution_angstrom)[1] for s in others]
        mine_wide = [ours_relion_range.bfactor_angstrom2] + [
            pp.postprocess(a, b, m, voxel, seed=s, randomise_from_angstrom=randomise, fit_highres_angstrom=0.0).bfactor_angstrom2 for s in others]
        theirs_wide = [bfactor] + [relion(h1, h2, mask, voxel, work / "relion_seeds" / f"{name}_{s}", seed=s, randomise=randomise)[1]
                                   for s in others]
        lorefine_spread = spread(mine) if ours.bfactor_source == "auto" else "not estimated"
        print(f"{'':<38} over {seeds + 1} phase randomisations: 10 Å to the resolution: lorefine {lorefine_spread}, "
              f"RELION {spread(theirs)}; RELION's default range: lorefine {spread(mine_wide)}, RELION {spread(theirs_wide)}")
    return ours.resolution_shell - shell


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/vs_relion_pp")
    p.add_argument("--seeds", type=int, default=0, help="also run both programs with this many other random seeds (0: none)")
    p.add_argument("--particles", type=int, default=SIMULATION["n_particles"])
    args = p.parse_args()
    if shutil.which("relion_postprocess") is None:
        print("relion_postprocess not found: install RELION (apt-get install relion) to run this comparison")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(HEADER)
    (h1, h2), voxel = halves_of(FIXTURES / "recon_ctf.star", work, "recon_ctf")
    for k in (1, 2):
        compare(f"recon_ctf halves, mask {k}", h1, h2, FIXTURES / f"phantom_mask_module_{k}.mrc", voxel, work, args.seeds, randomise=20.0)
    sim = work / "simulated"
    if not (sim / "particles.star").exists():
        simulate(simulate_config_from_dict(SIMULATION | {"n_particles": args.particles, "output": str(sim)}, work))
    few = sim / "particles_300.star"
    if not few.exists():
        write_star(few, read_star(sim / "particles.star").subset(slice(0, 300)))
    for poses, name in (("gt_module_1.star", "true poses of module 1"), ("particles.star", "consensus poses"),
                        ("particles_300.star", "300 particles")):
        (h1, h2), voxel = halves_of(sim / poses, work, poses.removesuffix(".star"))
        for k in (1, 2):
            compare(f"simulated, {name}, mask {k}", h1, h2, sim / f"mask_module_{k}.mrc", voxel, work, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
