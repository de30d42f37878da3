"""The cost model's coefficients (`refine.cost_model`), written by benchmarks/bench_scale.py --fit: do not edit by hand.

Command: python benchmarks/bench_scale.py --work /tmp/bsK --points b64_n1000 b64_n4000 b96_n1000 b64_n2000_r2 b64_n1000_3mod_r3 b96_n1000_3mod b128_n1000 b96_n2000_r2 b96_n1000_r3 b64_n2000_3mod_2it b96_n3000 b128_n1000_3mod b128_n2000_r2 b256_n500 b256_n500_r3 --report --fit
Program commit measured: c8fc370f35ab; bench_scale at commit 98fdaf81d8da; date: 2026-12-08
Fitted on: b64_n1000, b64_n4000, b96_n1000, b64_n2000_r2, b64_n1000_3mod_r3, b96_n1000_3mod, b128_n1000, b96_n2000_r2, b96_n1000_r3, b256_n500, b256_n500_r3
Units: work components, CPU seconds per feature unit; memory roles, bytes per feature unit (`refine.cost_model`).
BAND_FRACTION: the median band the fitted runs' searches found, as a fraction of Nyquist (assumed for band auto).
"""

MEASURED = "program c8fc370f35ab, 2026-12-08"
BAND_FRACTION = 0.500
COEFFICIENTS = {
    "back-projection": {
        "per_image_px": 7.771244658472375e-08
    },
    "band": {
        "per_image_px": 9.335973102398661e-08,
        "per_volume": 9.398206647086417e-10
    },
    "gridding": {
        "per_volume": 1.7690640654979905e-09
    },
    "local resolution": {
        "per_map_voxel": 4.432070825021185e-07
    },
    "other ranks": {
        "constant": 93246242.86824813,
        "per_insert_sample": 168.89184240304476,
        "per_module_voxel": 41.622984903816494,
        "per_padded_voxel": 0.0
    },
    "post-processing": {
        "per_map_voxel": 1.2445378426196013e-07,
        "per_particle": 0.00048448327609659786
    },
    "prior pilot": {
        "per_candidate_px": 5.545763252355877e-10
    },
    "rank 0": {
        "constant": 174152110.60936415,
        "per_insert_sample": 306.6015762642235,
        "per_module_voxel": 35.810807551147185,
        "per_padded_voxel": 1.407821880369632
    },
    "rank 1": {
        "constant": 118294031.94919437,
        "per_insert_sample": 151.14222716365032,
        "per_module_voxel": 0.0,
        "per_padded_voxel": 11.44962191626768
    },
    "search": {
        "per_candidate_px": 7.022121995474616e-09,
        "per_direction_px": 1.594291209079603e-07,
        "per_image_px": 0.0
    },
    "shared": {
        "per_byte": 1.4148656759286635
    },
    "stage set-up": {
        "per_volume": 4.723281004148567e-10
    },
    "start-up": {
        "per_map_voxel": 2.0293255461953482e-08,
        "per_particle": 1.9841133981839416e-05,
        "per_rank": 0.6503572004101502
    },
    "writing": {
        "per_map_voxel": 2.443611647564072e-07,
        "per_particle": 0.0001953993715084496
    }
}
