"""``iterations: auto``: the run iterates until its poses settle (or convergence.max_iterations), says why it stopped,
and leaves the last iteration's outputs at the top of its folder, the others in iteration_NN/, as a fixed count does."""

import h5py
from runs import make_run, run


def test_auto_iterations_stop_once_the_poses_settle_and_leave_the_last_on_top(tmp_path):
    # a generous fraction of the steps: the poses of this tiny set settle at the second iteration
    config = make_run(tmp_path, n_particles=24, iterations="auto", convergence={"step_fraction": 1.0, "max_iterations": 4})
    done = run("refine", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    with h5py.File(out / "results.h5", "r") as f:
        last, because = int(f.attrs["final_iteration"]), str(f.attrs["iterations_stopped_because"])
        stages = sorted(k for k in f if k.startswith("iteration_"))
    assert last == 2 and "settled" in because
    assert stages == ["iteration_01", "iteration_02"]
    for name in ("large", "small"):
        assert (out / name / "map.mrc").exists() and (out / "iteration_01" / name / "map.mrc").exists()
    assert (out / "combined.mrc").exists() and not (out / "iteration_02").exists()
    assert "iteration 2 is the last: the poses settled" in done.stderr
    again = run("refine", str(config))  # a finished run is refused, as with a fixed count
    assert again.returncode == 2 and "holds a finished lorefine run" in again.stderr


def test_auto_iterations_stop_at_the_most_allowed(tmp_path):
    config = make_run(tmp_path, n_particles=24, iterations="auto", convergence={"step_fraction": 1e-6, "max_iterations": 2})
    done = run("refine", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(tmp_path / "out" / "results.h5", "r") as f:
        assert int(f.attrs["final_iteration"]) == 2 and "max_iterations" in str(f.attrs["iterations_stopped_because"])


def test_the_end_of_run_takes_the_last_iteration_from_the_run_not_from_results_h5(tmp_path, monkeypatch):
    """Under MPI only rank 0 writes results.h5: another rank that reads it for the last iteration of ``iterations: auto``
    may find no record there yet (a fresh run on two ranks ended in a TypeError after its last stage). The end-of-run
    analysis takes the iteration from the loop every rank ran; here results.h5 is made to look as that rank saw it."""
    import json

    from lorefine_mpi.config import load_config
    from lorefine_mpi.io import results
    from lorefine_mpi.parallel.mpi import distributor
    from lorefine_mpi.refine.recorder import Recorder
    from lorefine_mpi.refine.run import refine
    from lorefine_mpi.report.html import write_report

    config = make_run(tmp_path, n_particles=24, iterations="auto", convergence={"step_fraction": 1.0, "max_iterations": 4},
                      postprocess={"enabled": True, "local_resolution": False})
    cfg = load_config(str(config))
    monkeypatch.setattr(results, "final_iteration", lambda path: None)  # the record not there yet, as rank 1 may read it
    dist = distributor()
    assert refine(cfg, dist, Recorder(cfg, dist, command_line="test", resume=False), write_report) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"]["iterations"] == 2
