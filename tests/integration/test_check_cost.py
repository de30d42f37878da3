"""`lorefine check` prints the cost model's figures for the run it checks (`refine.cost_model.summary_lines`): its CPU
core-hours, wall time and peak memory per rank and per node, and the sbatch options of each layout (--nodes ×
--ranks-per-node, else 1 node × 1, 16 and 64 ranks); ``--slurm`` prints those options alone; a bad layout is one line
and exit status 2."""

import re
from pathlib import Path

import pytest
from runs import make_run, messages, run

from lorefine_mpi.config import load_config
from lorefine_mpi.refine import cost, cost_model
from lorefine_mpi.refine.preflight import check_inputs

OPTIONS = r"--nodes=(\d+) --ntasks-per-node=(\d+) --mem-per-cpu=(\d+)([MG]) --time=(\d+)-(\d\d):(\d\d):00"
SBATCH = re.compile(r"sbatch " + OPTIONS + "$")
FIGURES = re.compile(r"(\d+) node\(s\) × (\d+) rank\(s\) +([\d.e+-]+) core-hours, wall (\d+):(\d\d) \(h:min\); peak memory rank 0 ([\d.]+) GiB.*"
                     r"node ([\d.]+) GiB$")


def figures(stdout: str) -> list[tuple]:
    return [FIGURES.search(line).groups() for line in stdout.splitlines() if "core-hours" in line]


def test_check_prints_the_models_figures_for_the_default_layouts(tmp_path):
    done = run("check", make_run(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "cost (model)     24 particles × 48² × 2 module(s) × 1 iteration(s)" in done.stdout
    rows = figures(done.stdout)
    assert [(int(n), int(r)) for n, r, *_ in rows] == list(cost_model.DEFAULT_LAYOUTS)
    core_hours = [float(row[2]) for row in rows]
    node_gib = [float(row[-1]) for row in rows]
    assert 0 < core_hours[0] <= core_hours[1] <= core_hours[2]  # more ranks: each waits for rank 0's serial parts
    assert 0 < node_gib[0] < node_gib[1] < node_gib[2]  # more ranks, more private memory on the node
    sbatch = [SBATCH.search(line).groups()[:2] for line in done.stdout.splitlines() if "sbatch --nodes" in line]
    assert sbatch == [(str(n), str(r)) for n, r in cost_model.DEFAULT_LAYOUTS]


def test_check_prints_the_layout_named_and_slurm_prints_its_options_alone(tmp_path):
    config = make_run(tmp_path)
    done = run("check", config, "--nodes", "8", "--ranks-per-node", "64")
    assert done.returncode == 0, done.stderr
    assert [(n, r) for n, r, *_ in figures(done.stdout)] == [("8", "64")]
    slurm = run("check", config, "--nodes", "8", "--ranks-per-node", "64", "--slurm")
    assert slurm.returncode == 0, slurm.stderr
    assert re.fullmatch(OPTIONS + "\n", slurm.stdout)
    assert "sbatch " + slurm.stdout.strip() in done.stdout  # the same request as the full report's


def test_the_slurm_request_is_the_models_figures_with_their_margins(tmp_path):
    cfg = load_config(make_run(tmp_path))
    est = cost_model.estimate(cost_model.run_shape(cfg, check_inputs(cfg), nodes=2, ranks_per_node=16))
    request = re.fullmatch(OPTIONS, cost_model.slurm_request(est)).groups()
    per_cpu_gib = int(request[2]) / (1 if request[3] == "G" else 1024)
    assert per_cpu_gib * 16 >= est.memory["node"] * cost_model.MEMORY_MARGIN / cost.GIB
    minutes = int(request[4]) * 1440 + int(request[5]) * 60 + int(request[6])
    assert minutes >= est.wall_seconds * cost_model.TIME_MARGIN / 60 + 15


@pytest.mark.parametrize("args, message", [
    (["--ranks-per-node", "0"], "argument --ranks-per-node: expected a whole number in [1, 4096], got '0'"),
    (["--nodes", "many"], "argument --nodes: expected a whole number in [1, 100000], got 'many'"),
    (["--slurm"], "--slurm: name the layout too (--nodes N --ranks-per-node R)"),
])
def test_a_bad_layout_is_one_line_and_exit_2(tmp_path, args, message):
    done = run("check", make_run(tmp_path), *args)
    assert done.returncode == 2
    assert len(messages(done.stderr)) == 1 and message in done.stderr
    assert done.stdout == ""


def test_the_runs_shape_is_the_configs(tmp_path):
    cfg = load_config(make_run(tmp_path, iterations=2, postprocess={"enabled": False}))
    shape = cost_model.run_shape(cfg, check_inputs(cfg), ranks_per_node=4, nodes=2, band_px={"large": 10.0, "small": 12.0})
    assert (shape.n_particles, shape.box_px, shape.iterations, shape.ranks, shape.padding, shape.gridding_iterations) == (24, 48, 2, 8, 1, 2)
    assert [m.evaluations for m in shape.modules] == [cost.evaluations(cfg.search)] * 2  # the count the work bound uses
    assert [m.pilot_evaluations for m in shape.modules] == [cost.evaluations(cfg.search, "simultaneous")] * 2  # auto prior
    assert shape.band_px == 12.0 and not shape.postprocess
    assert shape.consensus_halves  # band auto: the consensus half maps are reconstructed for it


def test_iterations_auto_costs_at_most_max_iterations(tmp_path):
    cfg = load_config(make_run(tmp_path, iterations="auto", convergence={"max_iterations": 3}))
    assert cost_model.run_shape(cfg, check_inputs(cfg)).iterations == 3


def test_the_slurm_template_documents_the_request_and_its_directives_take_it(tmp_path):
    """slurm/refine.sbatch says to pass `lorefine check --slurm`'s options to sbatch, which override its #SBATCH lines:
    every option printed must be one the template sets (else the template's own value would not be what is asked)."""
    template = (Path(__file__).resolve().parents[2] / "slurm" / "refine.sbatch").read_text()
    assert "sbatch $(lorefine check CONFIG.yaml --nodes 8 --ranks-per-node 64 --slurm) slurm/refine.sbatch CONFIG.yaml" in template
    directives = {line.split()[1].split("=")[0] for line in template.splitlines() if line.startswith("#SBATCH ")}
    done = run("check", make_run(tmp_path), "--nodes", "2", "--ranks-per-node", "3", "--slurm")
    assert done.returncode == 0, done.stderr
    printed = {option.split("=")[0] for option in done.stdout.split()}
    assert printed == {"--nodes", "--ntasks-per-node", "--mem-per-cpu", "--time"} and printed <= directives


def test_the_modules_masks_are_the_searchs_own(tmp_path):
    """The 2D mask the model counts (`refine.preflight`'s mask_diameter_px) is the one the first stage's search makes."""
    from lorefine_mpi.geometry import volumes
    from lorefine_mpi.io import mrc
    from lorefine_mpi.refine import engine

    cfg = load_config(make_run(tmp_path))
    summary = check_inputs(cfg)
    for module, found in zip(cfg.modules, summary.modules):
        mask = mrc.read_map(module.mask)[0]
        settings = engine.search_settings(cfg, mask, found.centre_angstrom / summary.pixel_size_angstrom, summary.box, module=module)
        assert settings.mask.sum() == volumes.circular_mask(summary.box, found.mask_diameter_px).sum() > 0
