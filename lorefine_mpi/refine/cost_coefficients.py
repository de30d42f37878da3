"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/bsC --merge /tmp/bsD --fit
Program commit measured: 164b3585753b; bench_scale at commit 164b3585753b; date: 2026-12-07
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3, b256_n500
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program 164b3585753b, 2026-12-07"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 7.933451660526552e-08
    },
    "band": {
        "per_image_px": 1.2168921491905077e-07,
        "per_volume": 1.079661142852292e-10
    },
    "gridding": {
        "per_volume": 1.9531381601885076e-09
    },
    "local resolution": {
        "per_map_voxel": 7.598917695125335e-07
    },
    "other ranks": {
        "constant": 133844776.42105262,
        "per_padded_voxel": 27.072368421052634,
        "per_particle": 0.0
    },
    "post-processing": {
        "per_map_voxel": 1.691288589104494e-07,
        "per_particle": 0.0005275756772942567
    },
    "prior pilot": {
        "per_candidate_px": 6.214012441933233e-10
    },
    "rank 0": {
        "constant": 424413402.5077481,
        "per_padded_voxel": 23.705251523121973,
        "per_particle": 0.0
    },
    "rank 1": {
        "constant": 130448717.50641128,
        "per_padded_voxel": 27.0991152391072,
        "per_particle": 11307.072794397543
    },
    "search": {
        "per_candidate_px": 8.427216150240501e-09,
        "per_image_px": 5.263869789190571e-08
    },
    "shared": {
        "per_byte": 1.7315288858993958
    },
    "stage set-up": {
        "per_volume": 4.632547634673421e-10
    },
    "start-up": {
        "per_map_voxel": 2.865825819134959e-08,
        "per_particle": 3.457189609622388e-05,
        "per_rank": 0.6109900383438847
    },
    "writing": {
        "per_map_voxel": 2.861133283900317e-07,
        "per_particle": 0.00020820004883502887
    }
}
