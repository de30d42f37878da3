"""Hostile suite (issue 30), class *resume*: a resumed run never mixes two data sets, and a run whose checkpoint or
output folder vanishes stops with the true cause. The checkpoint records each particle stack's size and modification
time and the bytes of a sample of images (`io.mrc.stack_identity`); `--continue` refuses changed stacks in one line,
and warns when only the times changed (a copy). The cases that need a live run are slow (benchmarks/hostile_suite.py)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

import h5py
import mrcfile
import numpy as np
import pytest
from hostile_cases import assert_refused, lorefine, set_header_float
from runs import DATA, LOREFINE, edit_config, make_run, messages, rewrite_map, run, units_done

# -- a finished run whose stacks the cases change (and put back) ----------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    config = make_run(folder, n_particles=16)
    edit_config(config, lambda c: c.update(modules=[{"name": "large", "mask": "phantom_mask_module_1.mrc"}]))
    done = run("refine", config)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, config


@contextlib.contextmanager
def changed(*paths):
    """Put the files back as they were (bytes and times) after the block."""
    kept = {p: (p.read_bytes(), os.stat(p)) for p in paths}
    try:
        yield
    finally:
        for p, (data, st) in kept.items():
            if p.is_symlink() or p.is_dir():
                p.unlink() if p.is_symlink() else shutil.rmtree(p)
            p.write_bytes(data)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _stack(folder):
    return folder / "proj_noctf.mrcs"


def _rewrite_stack(path, change):
    with mrcfile.open(path) as m:
        data, voxel = np.array(m.data), float(m.voxel_size.x)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(change(data), dtype=np.float32))
        m.voxel_size = voxel


def _other_images(n):
    """n images of the same box from another data set (tests/data/recon_noctf.mrcs)."""
    with mrcfile.open(DATA / "recon_noctf.mrcs") as m:
        return np.array(m.data[:n])


REFUSED = {
    "a stack replaced by another of the same size (the issue's example)": (
        lambda p: _rewrite_stack(p, lambda d: np.random.default_rng(5).normal(size=d.shape)), "holds other data than when the checkpoint was made"),
    "a stack with its images in another order": (lambda p: _rewrite_stack(p, lambda d: d[::-1]), "holds other data"),
    "one sampled image changed": (lambda p: _rewrite_stack(p, lambda d: np.where(np.arange(len(d))[:, None, None] == 7, d + 1, d)),
                                  "image 000008@proj_noctf.mrcs holds other data"),
    "one pixel of one image changed": (lambda p: _rewrite_stack(p, lambda d: d + (np.arange(d.size).reshape(d.shape) == 5000)),
                                       "holds other data"),
    "the stack cut to 20 images": (lambda p: _rewrite_stack(p, lambda d: d[:20]), "the particle stacks hold"),
    "the stack extended by 4 images": (lambda p: _rewrite_stack(p, lambda d: np.concatenate([d, d[:4]])), "the particle stacks hold"),
    "the stack of another data set of the same shape": (lambda p: _rewrite_stack(p, lambda d: _other_images(len(d))), "holds other data"),
    "the stack a symlink to another stack": (lambda p: (p.unlink(), p.symlink_to(p.parent / "other.mrcs")), "holds other data"),
}


@pytest.mark.parametrize("command", ["check", "refine"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_resume_changed_stacks_are_refused(finished, capfd, case, command):
    folder, config = finished
    change, fragment = REFUSED[case]
    shutil.copy(_stack(folder), folder / "other.mrcs")
    _rewrite_stack(folder / "other.mrcs", lambda d: d * 2 + 1)
    with changed(_stack(folder)):
        change(_stack(folder))
        assert_refused(capfd, [command, config, "--continue"], fragment, folder / "out",
                       also=["--continue needs the checkpoint's settings and inputs", "restore them, or use a new output folder"])
    (folder / "other.mrcs").unlink()


def _copied_over(path):
    """The stack replaced by a copy of itself (as ``cp`` without -p makes it: new times, the same bytes)."""
    shutil.copy(path, path.with_suffix(".copy"))
    os.replace(path.with_suffix(".copy"), path)


WARNED = {
    "the stack touched": lambda p: os.utime(p, ns=(time.time_ns(), time.time_ns())),
    "the stack copied over itself": lambda p: _copied_over(p),
    "an image no particle uses changed": lambda p: _rewrite_stack(p, lambda d: np.where(np.arange(len(d))[:, None, None] == 20, 0, d)),
    "its header's voxel size changed (lorefine reads the STAR file's)": lambda p: set_header_float(p, 10, 3.0 * 48),
}


@pytest.mark.parametrize("case", list(WARNED))
def test_resume_stacks_with_new_times_but_the_same_sample_resume_with_a_warning(finished, capfd, case):
    folder, config = finished
    with changed(_stack(folder)):
        WARNED[case](_stack(folder))
        time.sleep(0.01)
        code, out, err = lorefine(capfd, "check", config, "--continue")
        assert code == 0, err
        assert "warning: the particle stacks were modified (or copied) since the checkpoint was made" in out


def test_resume_an_unchanged_folder_resumes_without_a_warning(finished, capfd):
    folder, config = finished
    code, out, err = lorefine(capfd, "check", config, "--continue")
    assert code == 0 and "warning" not in out, out + err


def test_resume_a_checkpoint_of_an_earlier_lorefine_resumes_with_a_warning(finished, capfd):
    folder, config = finished
    results = folder / "out" / "results.h5"
    with changed(results):
        with h5py.File(results, "r+") as f:
            fingerprint = json.loads(f.attrs["search_fingerprint"])
            fingerprint.pop("stacks")
            f.attrs["search_fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        code, out, err = lorefine(capfd, "check", config, "--continue")
        assert code == 0, err
        assert "warning: the checkpoint does not record its particle stacks" in out


OTHER_INPUTS = {
    "the consensus map": ("phantom_whole.mrc", lambda p: rewrite_map(p, lambda d: d * 1.01), "phantom_whole.mrc changed"),
    "a mask": ("phantom_mask_module_1.mrc", lambda p: rewrite_map(p, lambda d: d * 0.99), "phantom_mask_module_1.mrc changed"),
}


@pytest.mark.parametrize("case", list(OTHER_INPUTS))
def test_resume_other_changed_inputs_are_still_refused(finished, capfd, case):
    folder, config = finished
    name, change, fragment = OTHER_INPUTS[case]
    with changed(folder / name):
        change(folder / name)
        assert_refused(capfd, ["check", config, "--continue"], fragment, folder / "out")


def test_resume_continue_auto_refuses_a_changed_stack_too(finished, capfd):
    folder, config = finished
    with changed(_stack(folder)):
        _rewrite_stack(_stack(folder), lambda d: d[::-1])
        assert_refused(capfd, ["refine", config, "--continue", "auto"], "holds other data than when the checkpoint was made", folder / "out")


def test_resume_a_changed_star_file_is_still_refused(finished, capfd):
    folder, config = finished
    star = folder / "particles.star"
    with changed(star):
        star.write_text(star.read_text().replace("000002@", "000017@", 1))
        assert_refused(capfd, ["check", config, "--continue"], "the contents of", folder / "out", also=["particles.star changed"])


# -- live runs: the checkpoint or the folder vanishes; a stack replaced after a kill -----------------------------

def _paused(tmp_path):
    """A serial run stopped (SIGSTOP) once it has checkpointed a unit."""
    config = make_run(tmp_path, n_particles=200, source="recon_noctf")
    job = subprocess.Popen(LOREFINE + ["refine", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while units_done(tmp_path / "out") < 1 and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, "the run ended before the test could pause it"
    job.send_signal(signal.SIGSTOP)
    return config, job


def _results_elsewhere(out):
    shutil.copy(out / "results.h5", out / "copy.h5")
    os.replace(out / "copy.h5", out / "results.h5")


VANISHED = {
    "results.h5 deleted (the issue's example)": (lambda out: (out / "results.h5").unlink(),
                                                 "results.h5: the checkpoint was deleted or moved away while this run was writing it"),
    "results.h5 replaced by another file": (_results_elsewhere, "results.h5: the checkpoint was replaced by another file"),
    "the output folder deleted (the issue's example)": (lambda out: shutil.rmtree(out), "the output folder was deleted or moved while this run"),
    "the output folder renamed (the issue's example)": (lambda out: out.rename(out.with_name("moved")), "the output folder was deleted or moved"),
    "the output folder replaced by another": (lambda out: (out.rename(out.with_name("moved")), out.mkdir()), "was replaced by another folder"),
    "the lock file deleted": (lambda out: (out / ".lorefine.lock").unlink(), "this run's lock file was deleted while the run held it"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(VANISHED))
def test_resume_a_vanished_checkpoint_or_folder_stops_the_run_with_the_true_cause(tmp_path, case):
    config, job = _paused(tmp_path)
    vanish, fragment = VANISHED[case]
    try:
        vanish(tmp_path / "out")
    finally:
        job.send_signal(signal.SIGCONT)
    out, err = job.communicate(timeout=300)
    lines = messages(err)
    assert job.returncode == 2 and len(lines) == 1, err[-3000:]
    assert fragment in lines[0] and "another lorefine run" not in lines[0] and "Traceback" not in err, lines[0]


@pytest.mark.slow
def test_resume_a_stack_replaced_between_a_kill_and_continue_is_refused(tmp_path, capfd):
    """The issue's example: the resumed run used to mix the two data sets (exit 0, a 78 Å map)."""
    config, job = _paused(tmp_path)
    job.kill()
    job.communicate()
    _rewrite_stack(tmp_path / "recon_noctf.mrcs", lambda d: np.random.default_rng(3).normal(size=d.shape))
    for command in ("check", "refine"):
        assert_refused(capfd, [command, config, "--continue"], "holds other data than when the checkpoint was made", tmp_path / "out")
