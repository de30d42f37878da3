"""A hostile user (issue 14): every case is one line on stderr naming what is wrong, exit status 2 (3 for a
stop), nothing written or overwritten, no traceback; `check` and `refine` refuse the same inputs before any
heavy work. The MPI cases (stalled ranks, errors on workers, Ctrl-C under mpiexec) are in
tests/mpi/test_hostile_mpi.py."""

import os
import signal
import stat
import subprocess
import time

import h5py
import numpy as np
import pytest
from runs import DATA, LOREFINE, drop_star_columns, edit_config, edit_star, make_run, messages, rewrite_map, run, tree, units_done

from lorefine_mpi.cli.main import main
from lorefine_mpi.io.mrc import read_map


def lorefine(capfd, *args):
    """lorefine in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def assert_refused(code, err, fragment):
    lines = messages(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lorefine: error:"), err
    assert fragment in lines[0], lines[0]


# -- inputs that used to give a silent wrong result, or pass check and crash refine -------------------

def _symlink_loop(folder, config):
    (folder / "loop.star").symlink_to("loop.star")
    edit_config(config, lambda c: c.update(particles="loop.star"))


def _same_image_twice(folder, config):
    (folder / "other_name.mrcs").symlink_to("proj_noctf.mrcs")
    edit_star(folder / "particles.star", "rlnImageName", {7: "000003@other_name.mrcs"})  # particle 3 is 000003@proj_noctf.mrcs


def _one_particle(folder, config):
    lines = (folder / "particles.star").read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if "@" in line]
    (folder / "particles.star").write_text("\n".join(line for i, line in enumerate(lines) if i not in rows[1:]) + "\n")


def _truncated_stack(folder, config):
    path = folder / "proj_noctf.mrcs"
    os.truncate(path, path.stat().st_size - 5000)


def _one_voxel_mask(folder, config):
    rewrite_map(folder / "phantom_mask_module_2.mrc", lambda d: np.where(np.arange(d.size).reshape(d.shape) == d.size // 2, 1.0, 0.0))


def _map_without_id(folder, config):
    """A map whose header lacks the 'MAP ' id (old writers): read permissively, and mrcfile's warning stays off stderr."""
    path = folder / "phantom_whole.mrc"
    data = bytearray(path.read_bytes())
    data[208:212] = b"\0\0\0\0"
    path.write_bytes(bytes(data))


VALIDATION = {
    "score.ctf true without defocus": (lambda f, c: (edit_config(c, lambda x: x["score"].update(ctf=True)),
                                                     drop_star_columns(f / "particles.star", ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"))),
                                       "score.ctf: true, but"),
    "all-zero consensus map": (lambda f, c: rewrite_map(f / "phantom_whole.mrc", lambda d: d * 0), "is 0 everywhere"),
    "one-voxel mask": (_one_voxel_mask, "covers 64 Å³"),
    "mask of all ones": (lambda f, c: rewrite_map(f / "phantom_mask_module_1.mrc", lambda d: d * 0 + 1), "covers 100 % of the box"),
    "two modules with the same mask": (lambda f, c: edit_config(c, lambda x: x["modules"][1].update(mask="phantom_mask_module_1.mrc")),
                                       "overlaps modules[0] (large)'s mask by 100 %"),
    "mask voxel size differs": (lambda f, c: rewrite_map(f / "phantom_mask_module_2.mrc", lambda d: d, voxel=3.0),
                                "voxel size 3 Å differs from"),
    "every particle in subset 1": (lambda f, c: edit_star(f / "particles.star", "rlnRandomSubset", {i: 1 for i in range(24)}),
                                   "the half sets hold 24 and 0 particles"),
    "a single particle": (_one_particle, "the half sets hold"),
    "rlnRandomSubset 3": (lambda f, c: edit_star(f / "particles.star", "rlnRandomSubset", {i: 1 + i % 2 for i in range(23)} | {23: 3}),
                          "_rlnRandomSubset of particle 24 is 3; expected 1 or 2"),
    "the same image under two stack names": (_same_image_twice, "particles 3 and 8 are the same image"),
    "NaN in rlnAngleRot": (lambda f, c: edit_star(f / "particles.star", "rlnAngleRot", {4: "nan"}), "column _rlnAngleRot, particle 5"),
    "inf in an origin": (lambda f, c: edit_star(f / "particles.star", "rlnOriginXAngst", {6: "inf"}), "column _rlnOriginXAngst, particle 7"),
    "one NaN voxel in the map": (lambda f, c: rewrite_map(f / "phantom_whole.mrc", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 99, np.nan, d)),
                                 "the map holds 1 NaN or Inf value"),
    "NaN in a mask": (lambda f, c: rewrite_map(f / "phantom_mask_module_1.mrc", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 5, np.nan, d)),
                      "phantom_mask_module_1.mrc: the map holds 1 NaN or Inf value"),
    "a truncated stack": (_truncated_stack, "the file is truncated"),
    "a binary config": (lambda f, c: c.write_bytes(os.urandom(64) + b"\0"), "not a YAML text file"),
    "a symlink loop": (_symlink_loop, "particles: cannot resolve 'loop.star'"),
    "duplicate YAML keys": (lambda f, c: c.write_text(c.read_text() + "seed: 4\n"), "key 'seed' is given twice"),
    "CTF amplitude contrast of 1": (lambda f, c: (edit_config(c, lambda x: x.update(particles="ctf.star", score={"ctf": "auto"})),
                                                  (f / "ctf.star").write_text((DATA / "proj_ctf.star").read_text().replace(" 0.100000 ", " 1.000000 ")),
                                                  os.symlink(DATA / "proj_ctf.mrcs", f / "proj_ctf.mrcs")),
                                    "_rlnAmplitudeContrast must be in [0, 1), got 1"),
}


@pytest.mark.parametrize("case", list(VALIDATION))
def test_check_and_refine_refuse_the_same_inputs_in_one_line(tmp_path, capfd, case):
    config = make_run(tmp_path)
    breaker, fragment = VALIDATION[case]
    breaker(tmp_path, config)
    before = tree(tmp_path)
    for command in ("check", "refine"):
        code, _, err = lorefine(capfd, command, config)
        assert_refused(code, err, fragment)
        assert "Traceback" not in err
    assert tree(tmp_path) == before  # nothing written, nothing changed


def test_a_map_header_without_its_id_is_read_with_no_warning_on_stderr(tmp_path, capfd):
    config = make_run(tmp_path)
    _map_without_id(tmp_path, config)
    code, out, err = lorefine(capfd, "check", config)
    assert code == 0 and err == "", err
    assert "is ready to run" in out


def test_a_utf16_config_with_its_byte_order_mark_is_read(tmp_path, capfd):
    config = make_run(tmp_path)
    config.write_bytes(config.read_text().encode("utf-16"))
    code, out, err = lorefine(capfd, "check", config)
    assert code == 0 and err == "", err


# -- output folders: nothing lost ------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished serial run of 24 particles (its folder and config)."""
    folder = tmp_path_factory.mktemp("finished")
    config = make_run(folder)
    done = run("refine", config)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, config


def test_check_refuses_a_folder_holding_a_finished_run(finished, capfd):
    folder, config = finished
    before = tree(folder / "out")
    code, _, err = lorefine(capfd, "check", config)
    assert_refused(code, err, "holds a finished lorefine run")
    code, _, err = lorefine(capfd, "refine", config)
    assert_refused(code, err, "holds a finished lorefine run")
    assert tree(folder / "out") == before


def test_outputs_follow_the_umask(tmp_path):
    modes = {}
    for umask in (0o022, 0o002):
        config = make_run(tmp_path / f"u{umask:o}", n_particles=8, iterations=1)
        edit_config(config, lambda c: c.update(modules=[{"name": "large", "mask": "phantom_mask_module_1.mrc"}]))
        done = subprocess.run(LOREFINE + ["refine", str(config)], capture_output=True, text=True, timeout=300,
                              preexec_fn=lambda: os.umask(umask))
        assert done.returncode == 0, done.stderr[-2000:]
        out = config.parent / "out"
        modes[umask] = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes == {0o022: {0o644}, 0o002: {0o664}}


def test_files_of_another_program_in_the_output_folder_are_not_overwritten(tmp_path, capfd):
    config = make_run(tmp_path)
    (tmp_path / "out" / "large").mkdir(parents=True)
    (tmp_path / "out" / "large" / "map.mrc").write_bytes(b"someone else's map")
    before = tree(tmp_path)
    for command in ("check", "refine"):
        code, _, err = lorefine(capfd, command, config)
        assert_refused(code, err, "holds large/map.mrc, which this run would overwrite, but no results.h5")
    assert tree(tmp_path) == before


def test_an_output_folder_holding_the_input_config_is_refused(tmp_path, capfd):
    config = make_run(tmp_path)
    edit_config(config, lambda c: c.update(output="."))
    before = tree(tmp_path)
    code, _, err = lorefine(capfd, "refine", config)
    assert_refused(code, err, f"output: {tmp_path / 'config.yaml'} is an input of this run")
    assert tree(tmp_path) == before


def test_the_resolved_config_a_run_wrote_resumes_that_run(finished, capfd):
    """Given back to lorefine (--continue), out/config.yaml is an input that stays as it is."""
    folder, _ = finished
    code, out, err = lorefine(capfd, "check", folder / "out" / "config.yaml", "--continue")
    assert code == 0, err
    assert "is ready to continue" in out


def test_reconstruct_and_fsc_never_overwrite_their_inputs(tmp_path, capfd):
    make_run(tmp_path)
    star = tmp_path / "particles.star"
    before = tree(tmp_path)
    code, _, err = lorefine(capfd, "reconstruct", "--particles", star, "--out", star)
    assert_refused(code, err, f"--out: {star} is an input of this command")
    code, _, err = lorefine(capfd, "reconstruct", "--particles", star, "--out", tmp_path / "proj_noctf.mrcs")
    assert_refused(code, err, "is an input of this command")
    m = tmp_path / "phantom_whole.mrc"
    code, _, err = lorefine(capfd, "fsc", m, m, "--json", m)
    assert_refused(code, err, "--json: ")
    code, _, err = lorefine(capfd, "fsc", m, m, "--json", tmp_path / "missing" / "fsc.json")
    assert_refused(code, err, f"--json: folder {tmp_path / 'missing'} does not exist")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("content", [b"", os.urandom(4096)], ids=["empty", "random bytes"])
def test_a_results_file_that_is_not_a_checkpoint_is_refused_and_kept(tmp_path, capfd, content):
    config = make_run(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.h5").write_bytes(content)
    for args in (("check", config, "--continue"), ("refine", config, "--continue"), ("refine", config)):
        code, _, err = lorefine(capfd, *args)
        assert code == 2 and len(messages(err)) == 1, err
        assert "results.h5" in err and "format 1" not in err and "Traceback" not in err
    assert (tmp_path / "out" / "results.h5").read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.h5"]


# -- refine: found during the run, stopped cleanly --------------------------------------------------

def test_nan_in_an_image_check_does_not_sample_stops_refine_naming_it(tmp_path):
    config = make_run(tmp_path, n_particles=130, source="recon_noctf")
    sample = set(np.random.default_rng(0).choice(130, size=100, replace=False).tolist())  # check's sample (config.check)
    bad = max(set(range(130)) - sample)
    rewrite_map(tmp_path / "recon_noctf.mrcs", lambda d: np.where(np.arange(d.size).reshape(d.shape) // (48 * 48) == bad, np.nan, d))
    assert run("check", config).returncode == 0
    done = run("refine", config)
    lines = messages(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert f"recon_noctf.mrcs: image {bad + 1} (0" in lines[0] and "holds NaN or Inf values" in lines[0]
    assert not (tmp_path / "out" / "large").exists()  # no map from a half-searched stage


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path):
    """Writes beyond 200 kB fail (RLIMIT_FSIZE, as a full disk makes them fail): one line, status 2, the
    checkpoint kept; with room again, --continue finishes the run."""
    import resource

    config = make_run(tmp_path, n_particles=16)
    edit_config(config, lambda c: c["search"].update(max_resolution_angstrom=10))  # no consensus half maps: the search runs first

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run(LOREFINE + ["refine", str(config)], capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    lines = messages(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "File too large" in lines[0] and "Traceback" not in done.stderr
    assert not list((tmp_path / "out").rglob(".*.mrc"))  # no temporary file left
    assert units_done(tmp_path / "out") > 0
    resumed = run("refine", config, "--continue")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_a_really_full_disk_is_one_line(tmp_path):
    """The output folder on a 300 kB tmpfs (a mount namespace of its own; skipped where one cannot be made)."""
    import shutil

    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no mount namespace here (unshare --user --mount)")
    config = make_run(tmp_path, n_particles=16)
    (tmp_path / "disk").mkdir()
    edit_config(config, lambda c: c.update(output="disk/out"))
    script = f"mount -t tmpfs -o size=300k tmpfs {tmp_path / 'disk'} && exec {' '.join(LOREFINE)} refine {config}"
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    lines = messages(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "No space left on device" in lines[0] and "Traceback" not in done.stderr


def paused_run(tmp_path, config, env=None):
    """A serial run started and stopped (SIGSTOP) once it has checkpointed a unit: it holds its folder's lock
    for as long as the test needs, however fast the machine."""
    job = subprocess.Popen(LOREFINE + ["refine", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **(env or {})})
    deadline = time.time() + 120
    while units_done(tmp_path / "out") < 1 and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, "the run ended before the test could pause it"
    job.send_signal(signal.SIGSTOP)
    return job


def test_ctrl_c_stops_with_status_3_and_the_run_resumes(tmp_path):
    config = make_run(tmp_path, n_particles=200, source="recon_noctf")
    job = paused_run(tmp_path, config)
    job.send_signal(signal.SIGINT)  # delivered when it runs again
    job.send_signal(signal.SIGCONT)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 3, err[-2000:]
    assert messages(err) == [f"lorefine: stopped; finished work is saved. Resume with: lorefine refine {config} --continue"], err[-2000:]
    resumed = run("refine", config, "--continue")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_a_second_run_on_the_same_folder_is_refused_by_lorefines_own_lock(tmp_path):
    """With HDF5's file locking off (as on many Lustre sites), a second --continue used to write NaN maps."""
    config = make_run(tmp_path, n_particles=200, source="recon_noctf")
    first = paused_run(tmp_path, config, env={"HDF5_USE_FILE_LOCKING": "FALSE"})
    try:
        second = run("refine", config, "--continue", env={"HDF5_USE_FILE_LOCKING": "FALSE"}, timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    lines = messages(second.stderr)
    assert len(lines) == 1 and "in use by another lorefine run (pid" in lines[0], second.stderr[-2000:]
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    for name in ("large/map.mrc", "small/map.mrc", "combined.mrc"):
        assert np.isfinite(read_map(tmp_path / "out" / name)[0]).all()
    with h5py.File(tmp_path / "out" / "results.h5", "r") as f:
        assert np.isfinite(f["iteration_01/small/origin_px"][...]).all()
    assert not (tmp_path / "out" / ".lorefine.lock").exists()
