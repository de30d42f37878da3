"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/bsE --merge /tmp/bsF --fit
Program commit measured: 702f1d09475b; bench_scale at commit 702f1d09475b; date: 2026-12-07
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3, b256_n500, b256_n500_r3
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program 702f1d09475b, 2026-12-07"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 7.522013666384166e-08
    },
    "band": {
        "per_image_px": 1.0493351214303964e-07,
        "per_volume": 1.4594309304929097e-09
    },
    "gridding": {
        "per_volume": 1.8055896093635491e-09
    },
    "local resolution": {
        "per_map_voxel": 4.55390403652794e-07
    },
    "other ranks": {
        "constant": 87745628.27312048,
        "per_insert_sample": 187.05738695012423,
        "per_module_voxel": 37.75577946214833,
        "per_padded_voxel": 0.0
    },
    "post-processing": {
        "per_map_voxel": 1.241448920554402e-07,
        "per_particle": 0.0005511418253900276
    },
    "prior pilot": {
        "per_candidate_px": 5.909191925515317e-10
    },
    "rank 0": {
        "constant": 224518014.08691815,
        "per_insert_sample": 432.4553944921832,
        "per_module_voxel": 17.357019645725536,
        "per_padded_voxel": 6.189958103639859
    },
    "rank 1": {
        "constant": 127123372.9665162,
        "per_insert_sample": 125.56217667541904,
        "per_module_voxel": 0.0,
        "per_padded_voxel": 13.785650201844238
    },
    "search": {
        "per_candidate_px": 6.904042497695022e-09,
        "per_image_px": 1.2736450693658769e-07
    },
    "shared": {
        "per_byte": 1.4163340670695599
    },
    "stage set-up": {
        "per_volume": 4.3854232564535797e-10
    },
    "start-up": {
        "per_map_voxel": 2.11706722373441e-08,
        "per_particle": 2.766908845453494e-06,
        "per_rank": 0.7096077050748276
    },
    "writing": {
        "per_map_voxel": 2.388444785930496e-07,
        "per_particle": 0.00022191918328187966
    }
}
