"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/lorefine_bench_scale_final --program dcd389b08a4f --report --fit
Program commit measured: dcd389b08a4f; bench_scale at commit 909935d5f21c; date: 2026-12-07
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3, b256_n500
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program dcd389b08a4f, 2026-12-07"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 6.178816580177415e-08
    },
    "band": {
        "per_image_px": 1.2503580133997512e-07,
        "per_volume": 2.316257995370868e-09
    },
    "gridding": {
        "per_volume": 1.8963565869219325e-09
    },
    "local resolution": {
        "per_map_voxel": 7.220734808190727e-07
    },
    "other ranks": {
        "constant": 146039646.3157895,
        "per_padded_voxel": 53.991776315789465,
        "per_particle": 0.0
    },
    "post-processing": {
        "per_map_voxel": 1.8990620153103129e-07,
        "per_particle": 0.0008696653016200331
    },
    "prior pilot": {
        "per_candidate_px": 1.0170281211561068e-09
    },
    "rank 0": {
        "constant": 364036927.97877866,
        "per_padded_voxel": 68.606309690889,
        "per_particle": 4950.680787043894
    },
    "rank 1": {
        "constant": 112228440.25012223,
        "per_padded_voxel": 62.59536039314803,
        "per_particle": 28039.515013346125
    },
    "search": {
        "per_candidate_px": 1.2484573229093138e-08,
        "per_image_px": 1.0762225867497319e-07
    },
    "shared": {
        "per_byte": 1.7343653960176657
    },
    "stage set-up": {
        "per_volume": 1.21387166584655e-09
    },
    "start-up": {
        "per_map_voxel": 3.160091927632226e-08,
        "per_particle": 9.994728588129822e-05,
        "per_rank": 0.7841885294343841
    },
    "writing": {
        "per_map_voxel": 3.688602373888396e-07,
        "per_particle": 0.00018824571195675578
    }
}
