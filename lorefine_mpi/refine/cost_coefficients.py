"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/bsI --program acba2c395488 --points b64_n1000 b64_n4000 b96_n1000 b64_n2000_r2 b64_n1000_3mod_r3 b96_n1000_3mod b128_n1000 b96_n2000_r2 b96_n1000_r3 b64_n2000_3mod_2it b96_n3000 b128_n1000_3mod b128_n2000_r2 b256_n500 b256_n500_r3 --fit
Program commit measured: acba2c395488; bench_scale at commit 74df9d5ab101; date: 2026-12-07
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3, b256_n500, b256_n500_r3
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program acba2c395488, 2026-12-07"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 8.99147644040013e-08
    },
    "band": {
        "per_image_px": 8.042862477661387e-08,
        "per_volume": 2.8093389142374523e-09
    },
    "gridding": {
        "per_volume": 2.102118900564656e-09
    },
    "local resolution": {
        "per_map_voxel": 5.164353685600581e-07
    },
    "other ranks": {
        "constant": 86954829.20608167,
        "per_insert_sample": 178.5138154510852,
        "per_module_voxel": 41.50393760929945,
        "per_padded_voxel": 0.0
    },
    "post-processing": {
        "per_map_voxel": 1.5039336943918995e-07,
        "per_particle": 0.0005528131034295604
    },
    "prior pilot": {
        "per_candidate_px": 6.875088056840101e-10
    },
    "rank 0": {
        "constant": 184404280.6853811,
        "per_insert_sample": 297.60859647858615,
        "per_module_voxel": 16.317766829876,
        "per_padded_voxel": 6.257045854453999
    },
    "rank 1": {
        "constant": 110500762.30190851,
        "per_insert_sample": 173.56172923833535,
        "per_module_voxel": 0.0,
        "per_padded_voxel": 11.388411625476733
    },
    "search": {
        "per_candidate_px": 8.37672723576397e-09,
        "per_direction_px": 2.268719840999476e-07,
        "per_image_px": 0.0
    },
    "shared": {
        "per_byte": 1.4149022322866411
    },
    "stage set-up": {
        "per_volume": 5.454738648357201e-10
    },
    "start-up": {
        "per_map_voxel": 2.6684828365558693e-08,
        "per_particle": 0.0,
        "per_rank": 0.8188621815109713
    },
    "writing": {
        "per_map_voxel": 3.067974653929854e-07,
        "per_particle": 0.0002661347604891093
    }
}
