"""Do our STAR files mean to RELION what they mean to us? Reconstruct each module of a simulated noise-free
set from its ground-truth STAR and from the consensus STAR, with `lorefine reconstruct` and (when installed)
RELION's `relion_reconstruct`, and compare with the ground-truth module inside its mask.

    python benchmarks/bench_groundtruth_reconstruction.py DATASET_DIR

DATASET_DIR: `lorefine simulate configs/simulate_noisefree.yaml --output DATASET_DIR` output (≥ 2,000 particles).
Prints per module and source: the lowest FSC up to 0.8 × Nyquist and the FSC 0.5 resolution.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lorefine_mpi.io import mrc
from lorefine_mpi.validation import fsc


def main():
    data = Path(sys.argv[1]).resolve()
    work = Path(tempfile.mkdtemp(prefix="lorefine_gt_"))
    relion = shutil.which("relion_reconstruct")
    print(f"dataset {data}; RELION: {relion or 'not installed (apt-get install relion)'}")
    print(f"{'module':8} {'poses':10} {'program':9} {'min FSC ≤0.8 Nyq':>18} {'FSC 0.5':>9}")
    for k in (1, 2):
        truth, voxel = mrc.read_map(data / f"gt_module_{k}.mrc")
        mask, _ = mrc.read_map(data / f"mask_module_{k}.mrc")
        n = truth.shape[0]
        upto = int(0.8 * (n // 2))
        for poses, star in (("truth", data / f"gt_module_{k}.star"), ("consensus", data / "particles.star")):
            outputs = {}
            out = work / f"lorefine_{k}_{poses}.mrc"
            subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "reconstruct", "--particles", str(star), "--out", str(out)],
                           check=True, capture_output=True)
            outputs["lorefine"] = out
            if relion:
                out = work / f"relion_{k}_{poses}.mrc"
                subprocess.run([relion, "--i", str(star), "--o", str(out)], check=True, capture_output=True, cwd=data)
                outputs["RELION"] = out
            for program, path in outputs.items():
                volume, _ = mrc.read_map(path)
                # the module alone: both maps inside the module mask (the other module is in the images too)
                curve = fsc.fsc(volume * mask, truth * mask, voxel)
                print(f"{k:<8} {poses:10} {program:9} {np.min(curve.fsc[1:upto + 1]):18.3f} {fsc.resolution_at(curve, 0.5):8.2f}Å")


if __name__ == "__main__":
    main()
