"""Where the score itself peaks: the maximum of Eq. 1 nearest the true pose, for each reference a first
LO-refinement iteration could use, on a noise-free set.

    lorefine simulate configs/simulate_noisefree.yaml --output noisefree
    python benchmarks/ccc_peak.py noisefree [--particles 100] [--seed 0]

For a random sample of particles and each module, the masked CCC of Eq. 1 (lorefine's own
`score.masked_ccc`, on the image moved by the preliminary origin, with the search's round 2D mask) is
climbed by Nelder–Mead over the five pose parameters (a rotation vector in the module frame and the
in-plane origin), continuously, starting *at the true pose*. The peak it reaches is where the score puts
the best pose; no search on any grid can do better than land on it. Printed: the fraction of particles
whose peak lies within one grid step of the truth (the angular step and the shift step of the dataset's
``lorefine.yaml``), and the median distances. The cases:

true map, rest exact      the module's true map; the image minus the other module's true projection
consensus, rest exact     the consensus map times the module mask (the first iteration's reference);
                          the rest removed exactly
consensus, rest subtract  the first iteration as lorefine runs it: the consensus reference, and the
                          rest (consensus times 1 - mask) subtracted at the consensus pose with k fitted
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import optimize

from lorefine_mpi.config.schema import load_config
from lorefine_mpi.geometry import rotations, volumes
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star
from lorefine_mpi.projection import fourier
from lorefine_mpi.refine.engine import search_settings
from lorefine_mpi.search import local, score


def poses(table):
    """(matrices (n, 3, 3), origins (n, 2) px) of a STAR table."""
    return table.matrices, table.origin_px


def climb(image_centred, fvol, mask, a_true, o_true_rel, box):
    """Nelder–Mead on −Eq. 1 from the true pose; returns (angle deg, shift px) of the peak from the truth."""
    inside = np.asarray(mask, dtype=bool)
    image_row = score.normalise_rows(image_centred[inside][None])

    def negative_ccc(x):
        a = rotations.from_rotation_vector(np.deg2rad(x[:3])) @ a_true
        ref = fourier.to_real(fourier.project(fvol, a[None], (o_true_rel + x[3:])[None]), box)[0]
        return -float(score.masked_ccc(image_row, score.normalise_rows(ref[inside][None]))[0, 0])

    simplex = np.vstack([np.zeros(5), np.diag([0.5, 0.5, 0.5, 0.2, 0.2])])
    found = optimize.minimize(negative_ccc, np.zeros(5), method="Nelder-Mead",
                              options={"xatol": 0.01, "fatol": 1e-8, "initial_simplex": simplex, "maxfev": 4000})
    return np.linalg.norm(found.x[:3]), np.linalg.norm(found.x[3:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--particles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = args.dataset.resolve()
    cfg = load_config(data / "lorefine.yaml")
    step_deg, step_px = cfg.search.angular_step_deg, cfg.search.shift_step_px
    table = read_star(cfg.particles)
    ids = np.sort(np.random.default_rng(args.seed).choice(len(table), args.particles, replace=False))
    consensus, _ = mrc.read_map(cfg.consensus_map)
    box = consensus.shape[0]
    masks = [np.clip(mrc.read_map(m.mask)[0], 0, 1) for m in cfg.modules]
    truth_maps = [mrc.read_map(data / f"gt_module_{k}.mrc")[0] for k in (1, 2)]
    truth = [poses(read_star(data / f"gt_module_{k}.star")) for k in (1, 2)]
    a_cons, o_cons = (x[ids] for x in poses(table))
    images_ft = fourier.to_fourier(mrc.read_images(table, ids))
    print(f"{args.particles} particles of {data.name}; the peak of Eq. 1 nearest the true pose, within one step ({step_deg:g}°, {step_px:g} px)")
    for index, module in enumerate(cfg.modules):
        other = 1 - index
        centre = volumes.centre_of_mass_px(consensus, masks[index])
        mask2d = search_settings(cfg, masks[index], centre, box).mask
        a_true, o_true = truth[index][0][ids], truth[index][1][ids]
        o_true_c = volumes.recentre_origins(a_true, o_true, centre)
        o_cons_c = volumes.recentre_origins(a_cons, o_cons, centre)
        exact_rest = fourier.project(fourier.prepare_volume(truth_maps[other], 2), truth[other][0][ids], truth[other][1][ids])
        consensus_rest = fourier.project(fourier.prepare_volume(consensus * (1 - masks[index]), 2), a_cons, o_cons)
        cases = [
            ("true map, rest exact", truth_maps[index], exact_rest, False),
            ("consensus, rest exact", consensus * masks[index], exact_rest, False),
            ("consensus, rest subtract", consensus * masks[index], consensus_rest, True),
        ]
        for name, reference, rest, fit_k in cases:
            fvol = fourier.prepare_volume(volumes.recentre(reference, centre), 2)
            angles, shifts = [], []
            for i in range(len(ids)):
                k = 1.0
                if fit_k:
                    target = fourier.project(fvol, a_cons[i : i + 1], o_cons_c[i : i + 1])[0]
                    k = local.fit_rest_scale(images_ft[i], target, rest[i])[1]
                image = fourier.shift_images_ft((images_ft[i] - k * rest[i])[None], -o_cons_c[i : i + 1])
                angle, shift = climb(fourier.to_real(image, box)[0], fvol, mask2d, a_true[i], o_true_c[i] - o_cons_c[i], box)
                angles.append(angle)
                shifts.append(shift)
            angles, shifts = np.array(angles), np.array(shifts)
            within = np.mean((angles <= step_deg + 1e-6) & (shifts <= step_px + 1e-6))
            print(f"{module.name:6} {name:26} {100 * within:6.1f}%   peak from truth: median {np.median(angles):5.2f}° "
                  f"{np.median(shifts):5.2f} px, 90th percentile {np.percentile(angles, 90):5.2f}°", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
