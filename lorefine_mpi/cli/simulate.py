"""`lorefine simulate [CONFIG.yaml]`: a flexible-complex dataset with the paper's protocol and its ground truth."""

import logging
from pathlib import Path

from lorefine_mpi.io.files import check_output_folder
from lorefine_mpi.refine.cost import check_memory
from lorefine_mpi.simulate.dataset import input_files, load_simulate_config, memory_bytes, module_count, output_names, simulate, simulate_config_from_dict

NAME = "simulate"
HELP = "simulate a flexible multi-module dataset (paper protocol) with ground truth; no CONFIG = the embedded default"

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("config", nargs="?", help="simulation YAML (see configs/simulate_default.yaml); omit for the default")
    parser.add_argument("--output", help="dataset folder (overrides the config's output)")
    parser.add_argument("--n-particles", type=int, help="number of particles (overrides the config)")


def run(args) -> int:
    if args.config:
        cfg = load_simulate_config(args.config)
    else:
        cfg = simulate_config_from_dict({"output": args.output or "lorefine_demo"}, Path.cwd())
    overrides = {}
    if args.output:
        overrides["output"] = str(Path(args.output).resolve())
    if args.n_particles is not None:
        overrides["n_particles"] = args.n_particles
    if overrides:
        import dataclasses

        from lorefine_mpi.config.schema import checked_value
        from lorefine_mpi.simulate.dataset import _RULES

        if "n_particles" in overrides:
            checked_value("n_particles", overrides["n_particles"], _RULES)
        cfg = dataclasses.replace(cfg, **overrides)
    inputs = input_files(cfg) + ([args.config] if args.config else [])
    check_output_folder("--output" if args.output else "output", cfg.output, output_names(module_count(cfg)), inputs)
    check_memory(memory_bytes(cfg), "box", cfg.box)
    log.info("simulate: %d particles, box %d, %.2f Å/px -> %s", cfg.n_particles, cfg.box, cfg.pixel_size_angstrom, cfg.output)
    stats = simulate(cfg)
    print(f"lorefine simulate: wrote {cfg.output} ({cfg.n_particles} particles, achieved SNR "
          f"{'noise-free' if stats['achieved_snr'] is None else format(stats['achieved_snr'], '.3f')}, {stats['seconds']} s)")
    print(f"next: lorefine refine {Path(cfg.output) / 'lorefine.yaml'}")
    return 0
