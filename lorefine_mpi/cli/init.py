"""`lorefine init REFINE3D_JOB (--masks M1 M2 … | --bodies BODIES.star)`: a commented config for a RELION project."""

from pathlib import Path

NAME = "init"
HELP = ("write a commented config for a RELION Refine3D job and the modules' masks (or a multi-body bodies file), "
        "with RELION's paths and a search window fitted to the σ given")


def add_arguments(parser):
    parser.add_argument("job", help="the Refine3D job folder (Refine3D/jobNNN/: run_data.star, run_class001.mrc, its half maps)")
    parser.add_argument("--masks", nargs="+", default=[], metavar="MASK", help="one soft mask per module (MRC, the consensus map's box)")
    parser.add_argument("--names", nargs="+", default=[], metavar="NAME", help="the modules' names (default: from the masks' file or folder names)")
    parser.add_argument("--bodies", default=None, help="a RELION multi-body bodies file instead of --masks (masks and σ per body)")
    parser.add_argument("--sigma-deg", type=float, default=None, help="σ of the modules' rotation, degrees (RELION's rlnBodySigmaAngles)")
    parser.add_argument("--sigma-angst", type=float, default=None, help="σ of the modules' shift, Å (RELION's rlnBodySigmaOffsetAngst)")
    parser.add_argument("--config", default="lorefine.yaml", help="the config to write (default lorefine.yaml here); never replaced")
    parser.add_argument("--project-dir", default=".", help="the RELION project directory, where image names start (default: here)")
    parser.add_argument("--out", default=None, help="the run's output folder (default LoRefine/<the Refine3D job's name>/)")


def run(args) -> int:
    from lorefine_mpi.config.from_relion import make_config, write_config
    from lorefine_mpi.errors import InputError

    for option, value in (("--sigma-deg", args.sigma_deg), ("--sigma-angst", args.sigma_angst)):
        if value is not None and not 0 < value <= 30:
            raise InputError(f"{option}: expected a σ in (0, 30], got {value:g}")
    text = make_config(Path(args.job), config_path=Path(args.config), project=Path(args.project_dir), masks=args.masks, names=args.names,
                       bodies=Path(args.bodies) if args.bodies else None, sigma_deg=args.sigma_deg, sigma_angstrom=args.sigma_angst,
                       output=args.out)
    path = write_config(Path(args.config), text)
    print(f"lorefine init: wrote {path}; next: lorefine check {path}")
    return 0
