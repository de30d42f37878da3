"""Compare a lorefine refine output with a dataset's ground truth (maps and per-module poses).

    python benchmarks/compare_groundtruth.py OUTPUT_DIR DATASET_DIR [--modules large:1 small:2 (default: every module of the set)]

DATASET_DIR holds gt_module_k.mrc, mask_module_k.mrc, gt_module_k.star and particles.star (as made by
`lorefine simulate` or shared/fixtures/flex_dev_snr025). Prints, per module: FSC 0.5 of the consensus
map and of the LO-refined map against the ground truth inside the module mask, and the median angular
and shift errors of the module poses before (consensus) and after.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from lorefine_mpi.geometry import rotations
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star
from lorefine_mpi.simulate.dataset import module_names
from lorefine_mpi.validation import fsc


def module_list(data: Path) -> list[tuple[str, int]]:
    """Every module of a set as (name, k), k the 1-based index of its gt_module_k / mask_module_k files: the names
    and masks of the set's lorefine.yaml (`lorefine simulate` writes it), else (a set without one) the names
    `lorefine simulate` gives to as many modules as there are gt_module_k.mrc files."""
    config = data / "lorefine.yaml"
    if config.exists():
        entries = yaml.safe_load(config.read_text())["modules"]
        return [(m["name"], int(Path(m["mask"]).stem.rsplit("_", 1)[1])) for m in entries]
    count = len(list(data.glob("gt_module_[0-9]*.mrc")))
    return list(zip(module_names(count), range(1, count + 1)))


def masked_correlation(volume, truth, mask) -> float:
    """Correlation of two maps over the voxels of a soft mask, each voxel weighted by the mask (means too)."""
    w = np.asarray(mask, dtype=np.float64)
    a, b = np.asarray(volume, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    a = a - (w * a).sum() / w.sum()
    b = b - (w * b).sum() / w.sum()
    return float((w * a * b).sum() / np.sqrt((w * a * a).sum() * (w * b * b).sum()))


def pose_errors(table, truth):
    a = table.matrices
    b = truth.matrices
    return np.rad2deg(rotations.geodesic_angle(a, b)), np.linalg.norm(table.origin_px - truth.origin_px, axis=1)


def compare(out_dir, data_dir, pairs, consensus_map=None):
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    consensus_star = read_star(data_dir / "particles.star")
    consensus_path = consensus_map or next(p for p in (data_dir / "consensus.mrc", data_dir / "consensus_relion.mrc") if p.exists())
    consensus, voxel = mrc.read_map(consensus_path)
    rows = []
    for name, k in pairs:
        gt, _ = mrc.read_map(data_dir / f"gt_module_{k}.mrc")
        mask, _ = mrc.read_map(data_dir / f"mask_module_{k}.mrc")
        refined, _ = mrc.read_map(out_dir / name / "map.mrc")
        truth = read_star(data_dir / f"gt_module_{k}.star")
        before_a, before_s = pose_errors(consensus_star, truth)
        after_a, after_s = pose_errors(read_star(out_dir / name / "particles.star"), truth)
        r_cons = fsc.resolution_at(fsc.fsc(consensus * mask, gt * mask, voxel), 0.5)
        r_lo = fsc.resolution_at(fsc.fsc(refined * mask, gt * mask, voxel), 0.5)
        rows.append({
            "module": name, "fsc05_consensus_angstrom": r_cons, "fsc05_lo_angstrom": r_lo,
            "median_angle_error_before_deg": float(np.median(before_a)), "median_angle_error_after_deg": float(np.median(after_a)),
            "median_shift_error_before_px": float(np.median(before_s)), "median_shift_error_after_px": float(np.median(after_s)),
            "within_one_step_fraction": float(np.mean((after_a <= 2.0 + 1e-6) & (after_s <= 1.0 + 1e-6))),
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("dataset")
    parser.add_argument("--modules", nargs="+", help="NAME:K pairs (output folder : gt index); default: every module of the set")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pairs = [(p.split(":")[0], int(p.split(":")[1])) for p in args.modules] if args.modules else module_list(Path(args.dataset))
    rows = compare(args.output, args.dataset, pairs)
    print(f"{'module':8} {'FSC0.5 cons':>11} {'FSC0.5 LO':>10} {'ang err before':>14} {'after':>6} {'shift before':>12} {'after':>6} {'≤1 step':>8}")
    for r in rows:
        print(f"{r['module']:8} {r['fsc05_consensus_angstrom']:10.2f}Å {r['fsc05_lo_angstrom']:9.2f}Å {r['median_angle_error_before_deg']:13.2f}° "
              f"{r['median_angle_error_after_deg']:5.2f}° {r['median_shift_error_before_px']:11.2f}px {r['median_shift_error_after_px']:5.2f}px "
              f"{100 * r['within_one_step_fraction']:7.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
