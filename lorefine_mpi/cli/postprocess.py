"""`lorefine postprocess --half1 H1 --half2 H2 --mask M [--bfactor auto|VALUE] --out DIR`: masked
gold-standard FSC (phase-randomisation corrected), B-factor, sharpened map, as relion_postprocess;
optionally a local-resolution map (--locres)."""

import shlex
import sys
import time
from pathlib import Path

import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.io import mrc
from lorefine_mpi.io.files import check_output_folder
from lorefine_mpi.projection.fourier import require_even_box
from lorefine_mpi.validation import locres as locres_mod
from lorefine_mpi.validation import postprocess as pp

NAME = "postprocess"
HELP = ("post-process two half maps as relion_postprocess: masked FSC with phase randomisation, resolution at 0.143, "
        "B-factor, sharpened map; optionally local resolution")


def add_arguments(parser):
    parser.add_argument("--half1", required=True, help="first unfiltered half map (MRC)")
    parser.add_argument("--half2", required=True, help="second unfiltered half map (MRC)")
    parser.add_argument("--mask", required=True, help="soft mask (MRC, values in [0, 1])")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--bfactor", default="auto", help="auto (Guinier fit, default) or a B-factor in Å² (negative sharpens)")
    parser.add_argument("--autob-lowres", type=float, default=pp.FIT_LOWRES_ANGSTROM, help="low-resolution end of the B-factor fit, Å (default 10)")
    parser.add_argument("--autob-highres", type=float, default=pp.FIT_HIGHRES_ANGSTROM,
                        help="high-resolution end of the B-factor fit, Å (default: the FSC 0.143 resolution; 0: to where the FSC "
                             f"weighting ends, relion_postprocess's default); with fewer than {pp.MIN_FIT_SHELLS} shells in the fit no "
                             "B-factor is estimated")
    parser.add_argument("--low-pass", type=float, default=None, help="low-pass filter the sharpened map here, Å (default: the resolution)")
    parser.add_argument("--randomize-at-A", dest="randomize_at", type=float, default=None,
                        help="randomise phases from this resolution, Å (default: where the unmasked FSC drops below 0.8)")
    parser.add_argument("--force-mask", action="store_true", help="use the mask even when the unmasked FSC extends further (as RELION's --force_mask)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phase randomisation (default 0)")
    parser.add_argument("--locres", action="store_true", help="also a local-resolution map (locres.mrc, histogram and slices)")
    defaults = locres_mod.LocresSettings()
    parser.add_argument("--locres-radius", type=float, default=defaults.radius_angstrom, help="local resolution: flat window radius, Å (default 12.5)")
    parser.add_argument("--locres-edge", type=float, default=defaults.edge_angstrom, help="local resolution: raised-cosine edge, Å (default 25)")
    parser.add_argument("--locres-step", type=float, default=defaults.step_angstrom, help="local resolution: window spacing, Å (default 25)")


def _bfactor(text: str):
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--bfactor: expected auto or a number (Å²), got {text!r}") from None
    if not np.isfinite(value) or abs(value) > 5000:
        raise InputError(f"--bfactor: expected auto or a number of Å² in [-5000, 5000], got {text}")
    return value


def _positive(name, value, allow_zero=False):
    if value is None:
        return
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{name}: expected a positive number of Å{' (or 0)' if allow_zero else ''}, got {value:g}")


def read_inputs(half1, half2, mask_path):
    """(half1, half2, mask, voxel) checked: same cubic even box and voxel size, mask values in [0, 1]."""
    a, voxel = mrc.read_map(half1)
    b, voxel_b = mrc.read_map(half2)
    if a.shape != b.shape:
        raise InputError(f"{half2}: box {b.shape} differs from {half1}'s {a.shape}; expected the same")
    if len(set(a.shape)) != 1:
        raise InputError(f"{half1}: expected a cubic map, got shape {a.shape}")
    require_even_box(a.shape[0], half1)
    if abs(voxel - voxel_b) > 1e-3 * voxel:
        raise InputError(f"{half2}: voxel size {voxel_b:g} Å differs from {half1}'s {voxel:g} Å")
    mrc.require_distinct(half1, a, half2, b, "the two half maps")
    return a, b, mrc.read_mask(mask_path, a.shape, "the half maps'")[0], voxel


def run(args) -> int:
    bfactor = _bfactor(args.bfactor)
    _positive("--autob-lowres", args.autob_lowres)
    _positive("--autob-highres", args.autob_highres, allow_zero=True)
    _positive("--low-pass", args.low_pass)
    _positive("--randomize-at-A", args.randomize_at)
    for name in ("locres_radius", "locres_edge", "locres_step"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    names = list(pp.output_names().values()) + (list(locres_mod.OUTPUT_NAMES.values()) if args.locres else [])
    out = check_output_folder("--out", args.out, names, [args.half1, args.half2, args.mask])
    a, b, mask, voxel = read_inputs(args.half1, args.half2, args.mask)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out: cannot create {out} ({error.strerror})") from None
    started = time.time()
    result = pp.postprocess(a, b, mask, voxel, bfactor=bfactor, fit_lowres_angstrom=args.autob_lowres,
                            fit_highres_angstrom=args.autob_highres, lowpass_angstrom=args.low_pass, force_mask=args.force_mask,
                            seed=args.seed, randomise_from_angstrom=args.randomize_at)
    paths = pp.write_outputs(out, result, f"{Path(args.half1).name}: resolution {result.resolution_angstrom:.2f} Å")
    paths["star"] = pp.write_relion_star(out / "postprocess.star", result, half1=args.half1, half2=args.half2, mask=args.mask,
                                         command=shlex.join(sys.argv))  # as relion_postprocess's, for RELION jobs that take one
    print(describe(result))
    if args.locres:
        from lorefine_mpi.refine.distributor import Distributor

        settings = locres_mod.LocresSettings(args.locres_radius, args.locres_edge, args.locres_step)
        local = locres_mod.local_resolution(Distributor(), a, b, voxel, settings, support=mask, seed=args.seed)
        paths |= {f"locres_{k}": v for k, v in locres_mod.write_outputs(out, local, result.sharpened, voxel, mask, "local resolution").items()}
        stats = locres_mod.summary(local, mask)
        if "median_angstrom" in stats:
            print(f"  local resolution in the mask: median {stats['median_angstrom']:.2f} Å (5–95 %: "
                  f"{stats['percentile_5_angstrom']:.2f}–{stats['percentile_95_angstrom']:.2f} Å), {len(local.centres_px)} windows of "
                  f"{local.window_box} px, {local.seconds:.1f} s")
    print(f"  wrote {', '.join(str(p) for p in paths.values())} ({time.time() - started:.1f} s)")
    return 0


def describe(result: pp.PostprocessResult) -> str:
    """Lines for a terminal: resolution, randomisation, B-factor, warnings."""
    f = result.fsc
    lines = [f"lorefine postprocess: FSC 0.143 {'(masked, phase-randomisation corrected)' if result.mask_used else '(unmasked: mask not used)'}: "
             f"{result.resolution_angstrom:.2f} Å (shell {result.resolution_shell}; interpolated crossing {result.resolution_interpolated_angstrom:.2f} Å)"]
    if f.randomise_from_shell is not None:
        lines.append(f"  phases randomised beyond {1 / f.spatial_frequency_inv_angstrom[f.randomise_from_shell]:.2f} Å "
                     f"(shell {f.randomise_from_shell}); corrected from shell {f.randomise_from_shell + 2}")
    else:
        lines.append("  the unmasked FSC never falls below 0.8: no phase randomisation, the masked FSC is used as it is")
    g = result.guinier
    if result.bfactor_source == "auto" and g.fit_slope is not None:
        first, last = (1 / np.sqrt(v) for v in g.fit_s2_range)
        lines.append(f"  B-factor: {result.bfactor_angstrom2:.1f} Å² (Guinier fit {first:.2f}–{last:.2f} Å, "
                     f"{g.fit_points} shells, r = {g.fit_correlation:.3f}); low-pass at {result.lowpass_angstrom:.2f} Å")
    elif result.bfactor_source == "not estimated":
        lines.append(f"  B-factor: not estimated ({g.fit_points} shells in the fit range), none applied; low-pass at {result.lowpass_angstrom:.2f} Å")
    else:
        lines.append(f"  B-factor: {result.bfactor_angstrom2:.1f} Å² ({result.bfactor_source}); low-pass at {result.lowpass_angstrom:.2f} Å")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)
