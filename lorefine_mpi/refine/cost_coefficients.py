"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/bsG --merge /tmp/bsH --fit
Program commit measured: 8eb56d0e5127; bench_scale at commit 8eb56d0e5127; date: 2026-12-07
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3, b256_n500, b256_n500_r3
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program 8eb56d0e5127, 2026-12-07"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 7.487958279741753e-08
    },
    "band": {
        "per_image_px": 1.1542712059163304e-07,
        "per_volume": 1.0505162026972757e-09
    },
    "gridding": {
        "per_volume": 1.831712275869572e-09
    },
    "local resolution": {
        "per_map_voxel": 4.169668373174402e-07
    },
    "other ranks": {
        "constant": 83123384.54174335,
        "per_insert_sample": 193.92958952847385,
        "per_module_voxel": 38.61929383633848,
        "per_padded_voxel": 0.0
    },
    "post-processing": {
        "per_map_voxel": 1.2466683613224013e-07,
        "per_particle": 0.0005489291981789807
    },
    "prior pilot": {
        "per_candidate_px": 5.904400161139067e-10
    },
    "rank 0": {
        "constant": 221117174.06607747,
        "per_insert_sample": 435.2074169629641,
        "per_module_voxel": 39.63801100067491,
        "per_padded_voxel": 0.1187337371760176
    },
    "rank 1": {
        "constant": 119341563.05068728,
        "per_insert_sample": 141.41647918540724,
        "per_module_voxel": 0.0,
        "per_padded_voxel": 13.619007533734127
    },
    "search": {
        "per_candidate_px": 7.255669897944106e-09,
        "per_image_px": 1.1281333039257763e-07
    },
    "shared": {
        "per_byte": 1.416107112040417
    },
    "stage set-up": {
        "per_volume": 4.5812701609833785e-10
    },
    "start-up": {
        "per_map_voxel": 2.5246076388318666e-08,
        "per_particle": 3.102608332189e-05,
        "per_rank": 0.6903687837477624
    },
    "writing": {
        "per_map_voxel": 2.484632989332364e-07,
        "per_particle": 0.00022272419751449127
    }
}
