"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/lorefine_bench_scale_final --program dcd389b08a4f --merge /tmp/lorefine_bench_scale_g /tmp/lorefine_bench_scale /tmp/lorefine_bench_scale_b /tmp/lorefine_bench_scale_c /tmp/lorefine_bench_scale_d /tmp/lorefine_bench_scale_e /tmp/lorefine_bench_scale_h /tmp/lorefine_bench_scale_i /tmp/lorefine_bench_scale_j --report --fit
Program commit measured: dcd389b08a4f; bench_scale at commit d8c0801bfab6; date: 2026-12-07
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program dcd389b08a4f, 2026-12-07"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 7.147403980916266e-08
    },
    "band": {
        "per_image_px": 1.3669307117515068e-07,
        "per_volume": 0.0
    },
    "gridding": {
        "per_volume": 1.9099839538529983e-09
    },
    "local resolution": {
        "per_map_voxel": 8.15825618385706e-07
    },
    "other ranks": {
        "constant": 146039646.3157895,
        "per_padded_voxel": 53.991776315789465,
        "per_particle": 0.0
    },
    "post-processing": {
        "per_map_voxel": 3.593664313073069e-07,
        "per_particle": 0.0006486053061285412
    },
    "prior pilot": {
        "per_candidate_px": 1.0816696428886612e-09
    },
    "rank 0": {
        "constant": 295475217.37785083,
        "per_padded_voxel": 84.29942217988904,
        "per_particle": 13761.156587082849
    },
    "rank 1": {
        "constant": 112228440.25012223,
        "per_padded_voxel": 62.59536039314803,
        "per_particle": 28039.515013346125
    },
    "search": {
        "per_candidate_px": 1.2386414879101567e-08,
        "per_image_px": 1.1679643153478268e-07
    },
    "shared": {
        "per_byte": 1.7343653960176657
    },
    "stage set-up": {
        "per_volume": 1.2128651570011168e-09
    },
    "start-up": {
        "per_map_voxel": 5.544174588003701e-08,
        "per_particle": 0.00011365540897113865,
        "per_rank": 0.7130143439738684
    },
    "writing": {
        "per_map_voxel": 4.973067608542112e-07,
        "per_particle": 0.0001533951547976896
    }
}
