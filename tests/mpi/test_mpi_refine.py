"""lorefine refine under mpiexec: the same answer for any number of ranks, after a kill and a resume, and
no hung job when a rank fails. Each test starts real MPI jobs in subprocesses (mpi_jobs.py)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import yaml
from mpi_jobs import STAGES, assert_same, command, env, interrupt_and_resume, make_run, rank_pids, run, units_done

pytestmark = pytest.mark.mpi


def test_same_results_without_mpi_and_for_1_2_and_3_ranks(tmp_path, reference):
    """lorefine alone (MPI never started; the reference) and mpiexec -n 1, 2, 3 lorefine: bitwise the same poses and maps."""
    for n in (1, 2, 3):
        folder = make_run(tmp_path / f"ranks{n}")
        done = run(n, "refine", str(folder / "config.yaml"))
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same(reference, folder)


def test_the_two_half_maps_are_reconstructed_on_two_ranks_at_once(tmp_path, reference):
    """With 2 ranks or more, half 1 is reconstructed on rank 0 and half 2 on rank 1 (three pairs: the consensus
    poses' and each module's), with the bits of the run on one process."""
    folder = make_run(tmp_path / "run")
    records = tmp_path / "records"
    records.mkdir()
    done = run(3, "refine", str(folder / "config.yaml"), script=Path(__file__).parent / "scripts" / "record_reconstructions.py",
               extra_env={"RECORD_DIR": str(records)})
    assert done.returncode == 0, done.stderr[-3000:]
    counts = {f.name: len(f.read_text().split()) for f in records.iterdir()}
    assert counts == {"reconstructions_0.txt": 3, "reconstructions_1.txt": 3}
    assert_same(reference, folder)


def test_simultaneous_search_reusing_the_pilots_scores_is_the_same_for_1_and_3_ranks(tmp_path):
    """The simultaneous strategy reuses the learned prior's pilot scores of the particles a rank scored itself
    (every particle with one rank, about a third with three, the others computed again): bitwise the same."""
    a, b = make_run(tmp_path / "r1", strategy="simultaneous"), make_run(tmp_path / "r3", strategy="simultaneous")
    for n, folder in ((1, a), (3, b)):
        done = run(n, "refine", str(folder / "config.yaml"))
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same(a, b)


@pytest.mark.slow
def test_same_results_for_4_ranks(tmp_path):
    a, b = make_run(tmp_path / "r1"), make_run(tmp_path / "r4")
    assert run(1, "refine", str(a / "config.yaml")).returncode == 0
    done = run(4, "refine", str(b / "config.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(a, b)


@pytest.mark.parametrize("victim,resume_ranks", [(1, 2), (0, 1)], ids=["worker, resumed on 2", "master, resumed on 1"])
def test_kill_then_continue_on_another_rank_count_equals_an_uninterrupted_run(tmp_path, reference, victim, resume_ranks):
    assert interrupt_and_resume(reference, make_run(tmp_path / "killed"), victim, seed=victim, resume_ranks=resume_ranks)["landed"]


def test_an_exception_on_one_rank_ends_every_rank_quickly(tmp_path):
    """The one launch through mpi4py's runner (python -m mpi4py), which also aborts on an exception."""
    folder = make_run(tmp_path / "fail")
    started = time.time()
    done = run(3, "refine", str(folder / "config.yaml"), script=Path(__file__).parent / "scripts" / "fail_on_rank.py", mpi4py_runner=True,
               timeout=60)
    assert done.returncode == 1
    assert time.time() - started < 30
    assert done.stderr.count("lorefine: rank 1/3 failed: RuntimeError: injected failure on rank 1") == 1


def test_sigterm_stops_cleanly_and_resume_completes(tmp_path, reference):
    folder = make_run(tmp_path / "term")
    config = folder / "config.yaml"
    job = subprocess.Popen(command(2, "refine", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), text=True)
    deadline = time.time() + 120
    while units_done(folder) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    for pid in rank_pids(config).values():
        os.kill(pid, signal.SIGTERM)  # what Slurm does to every task before a time limit
    out, err = job.communicate(timeout=60)
    assert job.returncode == 3, err[-2000:]
    assert "lorefine: stopped; finished work is saved. Resume with: lorefine refine" in err
    resumed = run(2, "refine", str(config), "--continue")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(reference, folder)


def edit_config(config: Path, edit) -> None:
    cfg = yaml.safe_load(config.read_text())
    edit(cfg)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_continue_refuses_a_changed_config_and_names_what_changed(tmp_path):
    folder = make_run(tmp_path / "run", n_particles=40)
    config, checkpoint = folder / "config.yaml", folder / "out" / "results.h5"
    assert run(1, "refine", str(config)).returncode == 0
    before = checkpoint.read_bytes()
    edit_config(config, lambda c: c["search"].update(cone_half_angle_deg=6))
    done = run(1, "refine", str(config), "--continue")
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if line.startswith("lorefine")]  # mpi4py's runner adds MPICH's abort line
    assert len(ours) == 1 and "search.cone_half_angle_deg was 4.0, is 6.0" in ours[0], done.stderr
    edit_config(config, lambda c: c["search"].update(cone_half_angle_deg=4))
    mask = folder / "phantom_mask_module_2.mrc"
    with mrcfile.open(mask, "r+") as m:  # same path and size, other contents
        m.data[...] *= 0.9
    done = run(1, "refine", str(config), "--continue")
    assert done.returncode == 2 and f"the contents of {mask} changed" in done.stderr, done.stderr
    assert checkpoint.read_bytes() == before


def test_continue_keeps_the_checkpoint_work_units_when_the_parallel_settings_change(tmp_path, reference):
    folder = make_run(tmp_path / "resumed")
    assert run(1, "refine", str(folder / "config.yaml")).returncode == 0
    with h5py.File(folder / "out" / "results.h5", "r+") as f:  # as if stopped after every other unit
        for stage in STAGES:
            g = f[stage]
            undone = np.flatnonzero(np.arange(len(g["unit_done"])) % 2 == 1)
            lost = np.isin(g["unit_of_particle"][...], undone)
            for name, value, where in (("unit_done", 0, undone), ("status", 0, lost), ("search_matrix", 0.0, lost), ("matrix", 0.0, lost)):
                data = g[name][...]
                data[where] = value
                g[name][...] = data
            g.attrs["complete"] = 0
    edit_config(folder / "config.yaml", lambda c: c["parallel"].update(unit_size=16, class_spacing_deg=60))
    done = run(2, "refine", str(folder / "config.yaml"), "--continue")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(reference, folder)


def test_an_input_error_under_mpi_is_printed_once(tmp_path):
    folder = make_run(tmp_path / "run", n_particles=20)
    edit_config(folder / "config.yaml", lambda c: c["search"].update(cone_half_angle_deg=1))  # below the 2° step
    for args in (("refine", str(folder / "config.yaml")), ("refine", str(tmp_path / "missing.yaml")), ("refine", "--bogus")):
        done = run(3, *args)
        assert done.returncode != 0
        assert [line.startswith("lorefine: error:") for line in done.stderr.splitlines()].count(True) == 1, done.stderr
