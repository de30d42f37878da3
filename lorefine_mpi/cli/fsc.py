"""`lorefine fsc MAP1 MAP2 [--mask M] [--json F] [--png F]`: Fourier shell correlation and resolution."""

import os

from lorefine_mpi.errors import InputError
from lorefine_mpi.io import mrc
from lorefine_mpi.io.files import check_output_file
from lorefine_mpi.validation import fsc

NAME = "fsc"
HELP = "FSC of two maps (masked: phase-randomisation corrected), resolution at FSC 0.5 and 0.143"


def add_arguments(parser):
    parser.add_argument("map1")
    parser.add_argument("map2")
    parser.add_argument("--mask", help="soft mask (MRC, values in [0, 1])")
    parser.add_argument("--json", help="write the curves as JSON")
    parser.add_argument("--png", help="plot the curves as PNG")


def run(args) -> int:
    inputs = [args.map1, args.map2] + ([args.mask] if args.mask else [])
    outputs = [(option, path) for option, path in (("--json", args.json), ("--png", args.png)) if path]
    for option, path in outputs:
        check_output_file(option, path, inputs)
    if args.json and args.png and os.path.abspath(args.json) == os.path.abspath(args.png):
        raise InputError(f"--png: {args.png} is also the --json output; expected two names")
    a, voxel = mrc.read_map(args.map1)
    b, voxel_b = mrc.read_map(args.map2)
    mrc.require_distinct(args.map1, a, args.map2, b, "the two maps")
    if a.shape != b.shape:
        raise InputError(f"{args.map2}: box {b.shape} differs from {args.map1}'s {a.shape}; expected the same")
    if abs(voxel - voxel_b) > 1e-3 * voxel:
        raise InputError(f"{args.map2}: voxel size {voxel_b:g} Å differs from {args.map1}'s {voxel:g} Å")
    mask = None
    if args.mask:
        mask, _ = mrc.read_mask(args.mask, a.shape, "the maps'")
    result = fsc.fsc(a, b, voxel, mask=mask)
    for threshold in (0.5, 0.143):
        shell, resolution = fsc.resolution_shell_at(result, threshold)
        print(f"FSC {threshold:<5g}: {resolution:.2f} Å (shell {shell}, the last above {threshold:g}, as relion_postprocess; "
              f"interpolated crossing {fsc.resolution_at(result, threshold):.2f} Å)")
    if result.randomise_from_shell is not None:
        print(f"phases randomised from shell {result.randomise_from_shell} "
              f"({1 / result.spatial_frequency_inv_angstrom[result.randomise_from_shell]:.2f} Å), corrected from shell "
              f"{result.randomise_from_shell + fsc.CORRECTION_OFFSET_SHELLS}")
    print(" shell  1/Å      Å        FSC")
    for i, (f, c) in enumerate(zip(result.spatial_frequency_inv_angstrom, result.fsc)):
        if i:
            print(f"{i:5d} {f:7.4f} {1 / f:7.2f} {c:9.4f}")
    label = "masked, corrected" if mask is not None else "unmasked"
    if args.json:
        fsc.write_fsc_json(args.json, {label: result})
    if args.png:
        fsc.plot_fsc_png(args.png, {label: result}, f"{args.map1} vs {args.map2}", details=mask is not None)
    return 0
