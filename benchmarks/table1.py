"""The paper's Table 1 on a simulated dataset: FSC 0.5 against ground truth of the consensus map and of
LO-refinement for both strategies and both score modes, and the module pose errors before and after.

    python benchmarks/table1.py DATASET_DIR [--ranks 2] [--modes subtract composite] [--strategies separate simultaneous]
                                [--search KEY=VALUE ...] [--out DIR]

DATASET_DIR is a `lorefine simulate` output (or shared/fixtures/flex_dev_snr025, whose consensus map is
consensus_relion.mrc). Each combination runs `mpiexec -n RANKS lorefine refine` into DATASET_DIR/table1/.
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from compare_groundtruth import compare  # noqa: E402

PAPER = {"small": ("13.4", "11.2", "11.1"), "large": ("11.1", "10.6", "10.4")}  # SNR 0.25, paper Table 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["subtract", "composite"])
    p.add_argument("--strategies", nargs="+", default=["separate", "simultaneous"])
    p.add_argument("--out", help="folder for the runs (default DATASET/table1)")
    p.add_argument("--search", nargs="+", default=[], metavar="KEY=VALUE",
                   help="search settings other than the defaults (the paper's), e.g. cone_half_angle_deg=4")
    args = p.parse_args(argv)
    search = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.search)}
    data = Path(args.dataset).resolve()
    consensus = next(c for c in ("consensus.mrc", "consensus_relion.mrc") if (data / c).exists())
    out_root = Path(args.out).resolve() if args.out else data / "table1"
    out_root.mkdir(parents=True, exist_ok=True)
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    rows = {}
    for mode in args.modes:
        for strategy in args.strategies:
            name = f"{strategy}_{mode}"
            cfg = {
                "particles": str(data / "particles.star"), "consensus_map": str(data / consensus),
                "modules": [{"name": "large", "mask": str(data / "mask_module_1.mrc")}, {"name": "small", "mask": str(data / "mask_module_2.mrc")}],
                "search": {"strategy": strategy, **search}, "score": {"mode": mode}, "output": str(out_root / name), "seed": 1,
            }
            config = out_root / f"{name}.yaml"
            config.write_text(yaml.safe_dump(cfg, sort_keys=False))
            shutil.rmtree(out_root / name, ignore_errors=True)
            started = time.time()
            done = subprocess.run([mpiexec, "-n", str(args.ranks), sys.executable, "-m", "mpi4py", "-m", "lorefine_mpi.cli.main", "refine", str(config)],
                                  capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-2000:])
                return 1
            rows[name] = (compare(out_root / name, data, [("large", 1), ("small", 2)], consensus_map=data / consensus), time.time() - started)
            print(f"ran {name}: {rows[name][1]:.0f} s with {args.ranks} ranks", flush=True)
    print(f"\nFSC = 0.5 against ground truth, {data.name} (paper Table 1, SNR 0.25, in brackets)")
    print(f"{'module':7} {'consensus':>14} " + " ".join(f"{n:>24}" for n in rows))
    for i, module in enumerate(("large", "small")):
        first = next(iter(rows.values()))[0][i]
        cells = " ".join(f"{r[0][i]['fsc05_lo_angstrom']:>24.2f}" for r in rows.values())
        print(f"{module:7} {first['fsc05_consensus_angstrom']:>9.2f} ({PAPER[module][0]}) {cells}")
    print(f"   paper LO: simultaneous {PAPER['large'][1]}/{PAPER['small'][1]} Å, separate {PAPER['large'][2]}/{PAPER['small'][2]} Å (large/small)")
    print("\nmedian pose error of each module: angle (deg) / shift (px), before -> after")
    for name, (r, _) in rows.items():
        print(f"{name:24} " + "   ".join(
            f"{x['module']}: {x['median_angle_error_before_deg']:.2f}->{x['median_angle_error_after_deg']:.2f}° "
            f"{x['median_shift_error_before_px']:.2f}->{x['median_shift_error_after_px']:.2f}px" for x in r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
