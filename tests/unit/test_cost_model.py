"""The fitted cost model (`refine.cost_model`): its fit recovers known coefficients, its terms scale as documented, its wall time,
memory per node and Slurm request follow from them."""

import math

import numpy as np
import pytest

from lorefine_mpi.projection import fourier
from lorefine_mpi.refine import cost_model as cost

MODULE = cost.ModuleShape(evaluations=1400.0, pilot_evaluations=44000.0, mask_pixels=700.0, directions=10313.0)


def shape(**changes) -> cost.RunShape:
    base = {"n_particles": 4000, "box_px": 128, "modules": (MODULE, MODULE), "iterations": 1, "band_px": 34.0}
    return cost.RunShape(**(base | changes))


def coefficients(seed=0) -> dict:
    """Arbitrary positive coefficients of every term of the model."""
    rng = np.random.default_rng(seed)
    out = {name: {term: float(rng.uniform(0.5, 2.0)) * 1e-9 for term in terms} for name, (terms, _) in cost.COMPONENTS.items()}
    for role in ("rank 0", "rank 1", "other ranks"):
        out[role] = {"constant": 3e8, "per_padded_voxel": float(rng.uniform(10, 40)), "per_insert_sample": 400.0, "per_module_voxel": 20.0}
    out["shared"] = {"per_byte": 1.0}
    return out


def varied_shapes():
    return [shape(n_particles=n, box_px=b, modules=(MODULE,) * m, iterations=i, ranks_per_node=r, band_px=b * 0.27)
            for n, b, m, i, r in [(1000, 128, 2, 1, 1), (4000, 128, 2, 1, 2), (16000, 128, 2, 1, 1), (2000, 192, 2, 1, 1),
                                  (1000, 256, 2, 1, 1), (4000, 256, 3, 2, 3), (8000, 192, 3, 1, 2), (500, 160, 2, 2, 1)]]


def test_fit_recovers_the_coefficients_that_made_the_data():
    truth = coefficients()
    shapes = varied_shapes()
    for name in cost.COMPONENTS:
        rows = [(cost.features(s)[name], cost.work_seconds(s, truth)[name]) for s in shapes]
        fitted = cost.fit(rows)
        for term, value in truth[name].items():
            assert fitted[term] == pytest.approx(value, rel=1e-6), (name, term)


def test_fit_keeps_coefficients_non_negative():
    rows = [({"a": 1.0, "b": float(x)}, 10.0 - x) for x in range(1, 6)]  # y falls with b: its best fit would be negative
    fitted = cost.fit(rows)
    assert fitted["b"] >= 0 and fitted["a"] > 0


def test_per_particle_terms_scale_with_particles_and_fixed_ones_do_not():
    truth = coefficients(1)
    small, large, larger = (cost.work_seconds(shape(n_particles=n), truth) for n in (2000, 4000, 6000))
    assert large["back-projection"] == pytest.approx(2 * small["back-projection"])
    # the search: a part per particle and a part per stage (the grid's directions projected once)
    assert larger["search"] - large["search"] == pytest.approx(large["search"] - small["search"])
    assert small["search"] < large["search"] < 2 * small["search"]
    for name in ("gridding", "band", "prior pilot", "stage set-up", "local resolution"):
        assert large[name] == pytest.approx(small[name])


def test_terms_scale_with_modules_iterations_and_max_poses():
    truth = coefficients(2)
    one = cost.work_seconds(shape(), truth)
    two_iterations = cost.work_seconds(shape(iterations=2), truth)
    assert two_iterations["search"] == pytest.approx(2 * one["search"])
    assert two_iterations["band"] == pytest.approx(2 * one["band"])
    # gridding: one pair of half maps per stage and one for the consensus
    assert two_iterations["gridding"] / one["gridding"] == pytest.approx((4 + 1) / (2 + 1))
    poses = cost.work_seconds(shape(max_poses=3), truth)
    stages = 2
    assert poses["back-projection"] / one["back-projection"] == pytest.approx((stages * 3 + 1) / (stages + 1))


def test_wall_time_shares_each_component_as_the_program_does():
    truth = coefficients(3)
    s1, s8 = shape(ranks_per_node=1), shape(ranks_per_node=8)
    w1, w8 = cost.work_seconds(s1, truth), cost.work_seconds(s8, truth)
    expected = (sum(w8[n] / 8 for n in ("search", "prior pilot", "back-projection", "local resolution"))
                + w8["gridding"] / 2 + w8["stage set-up"] + sum(w8[n] for n in ("band", "writing", "post-processing")) + w8["start-up"] / 8)
    assert cost.wall_seconds(s8, truth) == pytest.approx(expected)
    assert cost.wall_seconds(s1, truth) == pytest.approx(sum(w1.values()))
    est = cost.estimate(s8, truth)
    assert est.core_hours >= est.cpu_hours
    assert w8["start-up"] == pytest.approx(8 * w1["start-up"])  # every rank starts up


def test_node_memory_adds_the_ranks_of_the_fullest_node_and_the_shared_volumes_once():
    truth = coefficients(4)
    # ranks 0 and 1 above the others (as measured), so that the first node is the fullest
    truth["other ranks"]["per_padded_voxel"] = 0.5 * min(truth["rank 0"]["per_padded_voxel"], truth["rank 1"]["per_padded_voxel"])
    one = cost.memory_bytes(shape(), truth)
    assert one["node"] == pytest.approx(one["rank 0"]) and one["shared"] == 0
    m = cost.memory_bytes(shape(ranks_per_node=64, nodes=8), truth)
    assert m["node"] == pytest.approx(m["rank 0"] + m["rank 1"] + 62 * m["other ranks"] + m["shared"])
    spread = cost.memory_bytes(shape(ranks_per_node=1, nodes=3), truth)
    assert spread["node"] == pytest.approx(max(spread["rank 0"], spread["rank 1"], spread["other ranks"]) + spread["shared"])


def test_shared_bytes_are_the_programs_reference_volumes():
    for box, band, stages_modules in [(128, 34.0, (1, 2)), (192, 51.5, (2, 3)), (96, 48.0, (2, 2))]:
        iterations, modules = stages_modules
        s = shape(box_px=box, band_px=band, iterations=iterations, modules=(MODULE,) * modules)
        volumes = 2 if s.stages == 1 else modules + 1
        assert cost.shared_bytes(s) == volumes * np.prod(fourier.band_shape(box, 2, band)) * 8


def test_mask_pixels_are_the_round_mask_on_the_working_grid():
    box, diameter = 128, 42.0
    full = cost.mask_pixels(diameter, box, band_px=box / 2)
    assert full == pytest.approx(math.pi / 4 * diameter**2)
    half = cost.mask_pixels(diameter, box, band_px=31.0)  # working box 64
    assert half == pytest.approx(full / 4)


def test_slurm_request_rounds_memory_and_time_up():
    s = shape(ranks_per_node=4)
    est = cost.Estimate(work_seconds={}, wall_seconds=3600.0, memory={"node": 4 * 2**30 / cost.MEMORY_MARGIN}, shape=s)
    assert cost.slurm_request(est) == "--nodes=1 --ntasks-per-node=4 --mem-per-cpu=1G --time=0-01:45:00"
    est = cost.Estimate(work_seconds={}, wall_seconds=100.0, memory={"node": 4 * 1.1 * 2**30 / cost.MEMORY_MARGIN}, shape=s)
    assert cost.slurm_request(est) == "--nodes=1 --ntasks-per-node=4 --mem-per-cpu=1280M --time=0-00:30:00"


def test_the_insertion_term_stops_growing_at_the_insertion_cap():
    """The memory feature of the insertion's work arrays: one call's samples, min(N, a batch's images) images, at most INSERT_SAMPLES."""
    from lorefine_mpi.reconstruction.backproject import INSERT_SAMPLES

    def samples(**changes):
        return cost.role_features(shape(**changes))["per_insert_sample"]

    assert samples(box_px=64, n_particles=200) == pytest.approx(2 * samples(box_px=64, n_particles=100))
    assert samples(box_px=64, n_particles=4000) == samples(box_px=64, n_particles=256) < INSERT_SAMPLES
    assert samples(box_px=256, n_particles=500) == samples(box_px=256, n_particles=100000) == INSERT_SAMPLES
