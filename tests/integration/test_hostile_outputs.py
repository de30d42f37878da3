"""Hostile suite, class *output* (issue 30): one output policy for every subcommand. No command writes onto an input,
onto a file lorefine did not make, onto anything that is not a regular file (a folder, a symlink, a FIFO, a device),
into a folder that is neither new, empty nor lorefine's, or into a folder a live run holds; module names that are
the run's own folders are refused. Each refusal: one line, status 2, nothing written."""

import os
import shutil

import numpy as np
import pytest
from hostile_cases import assert_refused, copy_data, fake_run_folder, hold_lock, lorefine, set_config, snapshot, yaml_file
from runs import edit_config, make_run

# -- refine and check: the output folder -------------------------------------------------------------


def _system_folder(tmp_path, config, name):
    set_config(config, output=name)
    return None


def _home(tmp_path, config, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / "thesis.tex").write_text("\\documentclass{article}\n")
    monkeypatch.setenv("HOME", str(home))
    set_config(config, output="~")


def _user_files(tmp_path, config, files):
    out = tmp_path / "out"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)


FOLDERS = {
    "the root folder": (lambda t, c, m: _system_folder(t, c, "/"), "which lorefine did not write"),
    "/etc": (lambda t, c, m: _system_folder(t, c, "/etc"), "which lorefine did not write"),
    "/usr/share": (lambda t, c, m: _system_folder(t, c, "/usr/share"), "which lorefine did not write"),
    "the home folder (~)": (_home, "which lorefine did not write"),
    "a folder with a user's notes": (lambda t, c, m: _user_files(t, c, {"notes.txt": "mine"}), "holds notes.txt, which lorefine did not write"),
    "a folder with a hidden user file": (lambda t, c, m: _user_files(t, c, {".history": "x"}), "holds .history, which lorefine"),
    "a user file in a subfolder": (lambda t, c, m: _user_files(t, c, {"data/raw.mrc": "x"}), "holds data/raw.mrc, which lorefine"),
    "a file of the run's name in a module folder": (lambda t, c, m: _user_files(t, c, {"small/map.mrc": "x"}),
                                                   "holds small/map.mrc, which this run would overwrite"),
    "the inputs' own folder": (lambda t, c, m: (c.rename(t / "run.yaml"), set_config(t / "run.yaml", output=".")), "which lorefine did not write"),
    "a folder above the inputs": (lambda t, c, m: set_config(c, output=".."), "which lorefine did not write"),
    "a regular file": (lambda t, c, m: ((t / "out").write_text("x"), None)[1], "is a regular file; expected a folder"),
    "a FIFO": (lambda t, c, m: os.mkfifo(t / "out"), "is a FIFO (named pipe); expected a folder"),
    "a character device": (lambda t, c, m: set_config(c, output="/dev/null"), "is a character device; expected a folder"),
    "a symlink to /etc": (lambda t, c, m: ((t / "out").symlink_to("/etc"), None)[1], "which lorefine did not write"),
    "a folder inside a live run's": (lambda t, c, m: (hold_lock(t / "live"), set_config(c, output="live/sub")), "is in use by a running lorefine refine"),
    "/dev": (lambda t, c, m: _system_folder(t, c, "/dev"), "which lorefine did not write"),
    "/tmp": (lambda t, c, m: _system_folder(t, c, "/tmp"), "which lorefine did not write"),
    "a folder with another program's config.yaml": (lambda t, c, m: _user_files(t, c, {"config.yaml": "a: 1\n"}), "holds config.yaml, which this run"),
    "a folder with another program's combined.mrc": (lambda t, c, m: _user_files(t, c, {"combined.mrc": "x"}), "holds combined.mrc, which this run"),
    "a file lorefine wrote and the user edited": (lambda t, c, m: _edited_after_lorefine(t), "holds notes.json, which lorefine did not write"),
}


def _edited_after_lorefine(folder):
    from lorefine_mpi.io.star import atomic_write_text

    (folder / "out").mkdir()
    atomic_write_text(folder / "out" / "notes.json", "{}")  # recorded as lorefine's...
    (folder / "out" / "notes.json").write_text('{"mine": 1}')  # ...then changed by the user


@pytest.mark.parametrize("command", ["check", "refine"])
@pytest.mark.parametrize("case", list(FOLDERS))
def test_output_folder_is_new_empty_or_lorefines(tmp_path, capfd, monkeypatch, case, command):
    config = make_run(tmp_path)
    breaker, fragment = FOLDERS[case]
    breaker(tmp_path, config, monkeypatch)
    config = config if config.exists() else tmp_path / "run.yaml"
    system = {p: sorted(os.listdir(p)) for p in ("/", "/etc", "/usr/share")}
    assert_refused(capfd, [command, config], fragment, tmp_path)
    assert {p: sorted(os.listdir(p)) for p in system} == system


RESERVED = {"consensus": "consensus/ holds the consensus poses' half maps", "Consensus": "consensus/ holds", "MOTION": "motion/ holds",
            "motion": "motion/ holds", "iteration_01": "iteration_NN/", "iteration_7": "iteration_NN/", "Iteration_002": "iteration_NN/"}


@pytest.mark.parametrize("command", ["check", "refine"])
@pytest.mark.parametrize("name", list(RESERVED))
def test_output_module_names_of_the_runs_own_folders_are_refused(tmp_path, capfd, name, command):
    config = make_run(tmp_path)
    edit_config(config, lambda c: c["modules"][1].update(name=name))
    assert_refused(capfd, [command, config], f"modules[1].name: {name!r} is reserved for lorefine's own outputs", tmp_path,
                   also=[RESERVED[name]])


@pytest.mark.parametrize("names", [("large", "Large"), ("small", "SMALL")])
def test_output_module_names_that_differ_only_in_case_are_refused(tmp_path, capfd, names):
    config = make_run(tmp_path)
    edit_config(config, lambda c: [m.update(name=n) for m, n in zip(c["modules"], names)])
    assert_refused(capfd, ["check", config], "duplicate module name", tmp_path, also=["ignores case"])


def test_output_an_empty_folder_and_one_with_an_empty_subfolder_are_taken(tmp_path, capfd):
    config = make_run(tmp_path)
    (tmp_path / "out" / "empty").mkdir(parents=True)
    code, out, err = lorefine(capfd, "check", config)
    assert code == 0, err


# -- simulate -------------------------------------------------------------------------------------------

def _simulate_config(folder, **extra):
    return yaml_file(folder / "sim.yaml", {"output": "data", "n_particles": 4, "box": 32, "noise": {"snr": 1.0}} | extra)


def test_output_simulate_never_replaces_a_users_dataset(tmp_path, capfd, monkeypatch):
    """The issue's example: ``lorefine simulate --output .`` used to replace the user's particles.star and consensus.mrc."""
    (tmp_path / "particles.star").write_text("data_particles\n")
    (tmp_path / "consensus.mrc").write_bytes(b"my map")
    monkeypatch.chdir(tmp_path)
    assert_refused(capfd, ["simulate", "--output", "."], "which lorefine did not write", tmp_path)


SIMULATE = {
    "a folder with one user file": (lambda t: ((t / "data").mkdir(), (t / "data" / "notes.txt").write_text("x")), "holds notes.txt"),
    "a folder with a user's consensus.mrc": (lambda t: ((t / "data").mkdir(), (t / "data" / "consensus.mrc").write_text("x")), "holds consensus.mrc"),
    "a regular file": (lambda t: (t / "data").write_text("x"), "is a regular file; expected a folder"),
    "a FIFO": (lambda t: os.mkfifo(t / "data"), "is a FIFO (named pipe); expected a folder"),
    "a live run's folder": (lambda t: hold_lock(t / "data"), "is in use by a running lorefine refine"),
    "inside a live run's folder": (lambda t: (hold_lock(t / "run"), _simulate_config(t, output="run/data")), "is in use by a running"),
    "the config in the folder as lorefine.yaml": (lambda t: ((t / "data").mkdir(), _simulate_config(t, output=".").rename(t / "data" / "lorefine.yaml")),
                                                  "is an input of this command"),
    "a source map at an output's name": (lambda t: (copy_data(t / "data", "phantom_whole.mrc", "phantom_mask_module_1.mrc", "phantom_mask_module_2.mrc"),
                                                     os.rename(t / "data" / "phantom_whole.mrc", t / "data" / "consensus.mrc"),
                                                     _simulate_config(t, box=48, source={"map": "data/consensus.mrc", "masks": [
                                                         "data/phantom_mask_module_1.mrc", "data/phantom_mask_module_2.mrc"]})),
                                          "is an input of this command"),
    "a character device": (lambda t: _simulate_config(t, output="/dev/null"), "is a character device; expected a folder"),
    "a lorefine run's folder": (lambda t: (fake_run_folder(t / "data")), "which lorefine did not write"),
}


@pytest.mark.parametrize("case", list(SIMULATE))
def test_output_simulate_refuses(tmp_path, capfd, case):
    _simulate_config(tmp_path)
    breaker, fragment = SIMULATE[case]
    breaker(tmp_path)
    config = tmp_path / "sim.yaml" if (tmp_path / "sim.yaml").exists() else tmp_path / "data" / "lorefine.yaml"
    assert_refused(capfd, ["simulate", config], fragment, tmp_path)


def test_output_simulate_may_write_its_own_folder_again(tmp_path, capfd):
    config = _simulate_config(tmp_path)
    for _ in range(2):
        code, out, err = lorefine(capfd, "simulate", config)
        assert code == 0, err[-2000:]
    (tmp_path / "data" / "notes.txt").write_text("the user's now")
    assert_refused(capfd, ["simulate", config], "holds notes.txt", tmp_path)


# -- postprocess ---------------------------------------------------------------------------------------

def _halves(folder):
    copy_data(folder, "phantom_module_1.mrc", "phantom_module_2.mrc", "phantom_mask_module_1.mrc")
    return ["--half1", folder / "phantom_module_1.mrc", "--half2", folder / "phantom_module_2.mrc", "--mask", folder / "phantom_mask_module_1.mrc"]


POSTPROCESS = {
    "its own half map as output (the issue's example)": (
        lambda t, h: (os.rename(t / "phantom_module_1.mrc", t / "postprocess.mrc"), os.chdir(t),
                      ["--half1", "postprocess.mrc", *h[2:], "--out", "."]), "is an input of this command"),
    "the folder of a live run itself": (lambda t, h: (hold_lock(t / "run"), [*h, "--out", t / "run"]), "is in use by a running lorefine"),
    "its mask as the masked map": (lambda t, h: (os.rename(t / "phantom_mask_module_1.mrc", t / "postprocess_masked.mrc"),
                                                 [*h[:4], "--mask", t / "postprocess_masked.mrc", "--out", t]), "is an input of this command"),
    "a folder of user files": (lambda t, h: ((t / "pp").mkdir(), (t / "pp" / "x.txt").write_text("x"), [*h, "--out", t / "pp"]), "holds x.txt"),
    "a user's locres.mrc with --locres": (lambda t, h: ((t / "pp").mkdir(), (t / "pp" / "locres.mrc").write_text("x"),
                                                        [*h, "--out", t / "pp", "--locres"]), "holds locres.mrc"),
    "a regular file": (lambda t, h: ((t / "pp").write_text("x"), [*h, "--out", t / "pp"]), "is a regular file; expected a folder"),
    "a FIFO": (lambda t, h: (os.mkfifo(t / "pp"), [*h, "--out", t / "pp"]), "is a FIFO (named pipe); expected a folder"),
    "/dev/null": (lambda t, h: [*h, "--out", "/dev/null"], "is a character device; expected a folder"),
    "a live run's module folder": (lambda t, h: (hold_lock(t / "run"), [*h, "--out", t / "run" / "large"]), "is in use by a running lorefine"),
    "a symlink to /etc": (lambda t, h: ((t / "pp").symlink_to("/etc"), [*h, "--out", t / "pp"]), "which lorefine did not write"),
}


@pytest.mark.parametrize("case", list(POSTPROCESS))
def test_output_postprocess_refuses(tmp_path, capfd, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    halves = _halves(tmp_path)
    breaker, fragment = POSTPROCESS[case]
    args = breaker(tmp_path, halves)
    args = args[-1] if isinstance(args, tuple) else args
    assert_refused(capfd, ["postprocess", *args], fragment, tmp_path)


def test_output_postprocess_may_write_its_own_folder_again(tmp_path, capfd):
    from lorefine_mpi.io import mrc

    copy_data(tmp_path, "phantom_whole.mrc", "phantom_mask_module_1.mrc")
    whole, voxel = mrc.read_map(tmp_path / "phantom_whole.mrc")
    rng = np.random.default_rng(0)
    for name in ("h1.mrc", "h2.mrc"):
        mrc.write_map(tmp_path / name, whole + rng.normal(size=whole.shape) * 2 * whole.std(), voxel)
    halves = ["--half1", tmp_path / "h1.mrc", "--half2", tmp_path / "h2.mrc", "--mask", tmp_path / "phantom_mask_module_1.mrc"]
    for _ in range(2):
        code, out, err = lorefine(capfd, "postprocess", *halves, "--out", tmp_path / "pp")
        assert code == 0, err[-2000:]


# -- fsc ---------------------------------------------------------------------------------------------

def _maps(folder):
    copy_data(folder, "phantom_module_1.mrc", "phantom_module_2.mrc", "phantom_mask_module_1.mrc")
    return [folder / "phantom_module_1.mrc", folder / "phantom_module_2.mrc"]


FSC = {
    "--json /dev/full (the issue's example)": (lambda t: ["--json", "/dev/full"], "/dev/full is a character device, not a regular file"),
    "--png /dev/null": (lambda t: ["--png", "/dev/null"], "is a character device, not a regular file"),
    "--json a FIFO": (lambda t: (os.mkfifo(t / "f.json"), ["--json", t / "f.json"])[1], "is a FIFO (named pipe), not a regular file"),
    "--json a folder": (lambda t: ((t / "f.json").mkdir(), ["--json", t / "f.json"])[1], "is a folder, not a regular file"),
    "--png a symlink": (lambda t: ((t / "f.png").symlink_to(t / "phantom_module_2.mrc"), ["--png", t / "f.png"])[1], "is an input of this command"),
    "--json a dangling symlink": (lambda t: ((t / "f.json").symlink_to(t / "nowhere"), ["--json", t / "f.json"])[1], "is a symbolic link"),
    "--json a user's file": (lambda t: ((t / "f.json").write_text("{}"), ["--json", t / "f.json"])[1], "exists and lorefine did not write it"),
    "--png a user's file": (lambda t: ((t / "f.png").write_bytes(b"png"), ["--png", t / "f.png"])[1], "exists and lorefine did not write it"),
    "--json and --png one file": (lambda t: ["--json", t / "f.out", "--png", t / "f.out"], "is also the --json output"),
    "--json the first map": (lambda t: ["--json", t / "phantom_module_1.mrc"], "is an input of this command"),
    "--png the mask": (lambda t: ["--mask", t / "phantom_mask_module_1.mrc", "--png", t / "phantom_mask_module_1.mrc"], "is an input of this command"),
    "--json a hard link to a map": (lambda t: (os.link(t / "phantom_module_2.mrc", t / "f.json"), ["--json", t / "f.json"])[1], "is an input"),
    "--json in a missing folder": (lambda t: ["--json", t / "no" / "f.json"], "does not exist"),
    "--json in a live run's folder": (lambda t: (hold_lock(t / "run"), ["--json", t / "run" / "f.json"])[1], "is in use by a running lorefine"),
    "--png below a file": (lambda t: ((t / "notes.txt").write_text("x"), ["--png", t / "notes.txt" / "f.png"])[1], "does not exist"),
}


@pytest.mark.parametrize("case", list(FSC))
def test_output_fsc_refuses(tmp_path, capfd, case):
    maps = _maps(tmp_path)
    breaker, fragment = FSC[case]
    args = breaker(tmp_path)
    watch = [tmp_path] + [a for a in ("/dev/full", "/dev/null") if a in args]
    assert_refused(capfd, ["fsc", *maps, *args], fragment, watch)


def test_output_fsc_may_replace_what_it_wrote_but_not_a_changed_file(tmp_path, capfd):
    maps = _maps(tmp_path)
    for _ in range(2):
        code, out, err = lorefine(capfd, "fsc", *maps, "--json", tmp_path / "f.json")
        assert code == 0, err
    (tmp_path / "f.json").write_text("{} ")  # changed by the user since
    assert_refused(capfd, ["fsc", *maps, "--json", tmp_path / "f.json"], "exists and lorefine did not write it (or it changed since)", tmp_path)


# -- reconstruct -----------------------------------------------------------------------------------------

RECONSTRUCT = {
    "a user's map": (lambda t: ((t / "map.mrc").write_bytes(b"x"), ["--out", t / "map.mrc"])[1], "exists and lorefine did not write it"),
    "the stack": (lambda t: ["--out", t / "proj_noctf.mrcs"], "is an input of this command"),
    "the STAR file": (lambda t: ["--out", t / "particles.star"], "is an input of this command"),
    "a folder": (lambda t: ((t / "m").mkdir(), ["--out", t / "m"])[1], "is a folder, not a regular file"),
    "a FIFO": (lambda t: (os.mkfifo(t / "m.mrc"), ["--out", t / "m.mrc"])[1], "is a FIFO (named pipe), not a regular file"),
    "/dev/null": (lambda t: ["--out", "/dev/null"], "is a character device, not a regular file"),
    "a user's half map": (lambda t: ((t / "m_half1.mrc").write_bytes(b"x"), ["--out", t / "m.mrc", "--half-maps"])[1],
                          "m_half1.mrc exists and lorefine did not write it"),
    "a live run's folder": (lambda t: (hold_lock(t / "run"), ["--out", t / "run" / "m.mrc"])[1], "is in use by a running lorefine"),
    "a symlink to the consensus map": (lambda t: ((t / "m.mrc").symlink_to(t / "phantom_whole.mrc"), ["--out", t / "m.mrc"])[1],
                                       "is a symbolic link"),
    "a hard link to the STAR file": (lambda t: (os.link(t / "particles.star", t / "m.mrc"), ["--out", t / "m.mrc"])[1], "is an input"),
}


@pytest.mark.parametrize("case", list(RECONSTRUCT))
def test_output_reconstruct_refuses(tmp_path, capfd, case):
    make_run(tmp_path)
    breaker, fragment = RECONSTRUCT[case]
    args = breaker(tmp_path)
    watch = [tmp_path] + [a for a in ("/dev/null",) if a in args]
    assert_refused(capfd, ["reconstruct", "--particles", tmp_path / "particles.star", "--project-dir", tmp_path, *args], fragment, watch)


# -- report and subtract: into a run's folder ---------------------------------------------------------------

ADD_TO_RUN = {
    "report: a live run's folder (the issue's example)": (lambda t: (hold_lock(fake_run_folder(t / "out")), ["report", t / "out"])[1],
                                                         "is in use by a running lorefine refine"),
    "subtract: a live run's folder (the issue's example)": (lambda t: (hold_lock(fake_run_folder(t / "out")),
                                                                       ["subtract", t / "out", "--module", "large"])[1], "is in use by a running"),
    "report: a folder that is no run's": (lambda t: ((t / "out").mkdir(), (t / "out" / "config.yaml").write_text("x: 1\n"),
                                                     ["report", t / "out"])[2], "out: no results.h5; expected a lorefine refine output folder"),
    "report: /etc": (lambda t: ["report", "/etc"], "/etc: no config.yaml; expected a lorefine refine output folder"),
    "subtract: a folder that is no run's": (lambda t: ((t / "out").mkdir(), ["subtract", t / "out", "--module", "large"])[1], "no config.yaml"),
    "report: report.html a FIFO": (lambda t: (fake_run_folder(t / "out"), os.mkfifo(t / "out" / "report.html"), ["report", t / "out"])[2],
                                   "is a FIFO (named pipe), not a regular file"),
    "report: report.html a folder": (lambda t: (fake_run_folder(t / "out"), (t / "out" / "report.html").mkdir(), ["report", t / "out"])[2],
                                     "is a folder, not a regular file"),
    "report: report.html a symlink": (lambda t: (fake_run_folder(t / "out"), (t / "out" / "report.html").symlink_to("/etc/hostname"),
                                                 ["report", t / "out"])[2], "is a symbolic link"),
    "subtract: subtracted.mrcs a folder": (lambda t: (fake_run_folder(t / "out"), (t / "out" / "large" / "subtracted.mrcs").mkdir(parents=True),
                                                      ["subtract", t / "out", "--module", "large"])[2], "is a folder, not a regular file"),
    "subtract: subtracted.star a FIFO": (lambda t: (fake_run_folder(t / "out"), (t / "out" / "small").mkdir(),
                                                    os.mkfifo(t / "out" / "small" / "subtracted.star"),
                                                    ["subtract", t / "out", "--module", "small"])[3], "is a FIFO"),
}


@pytest.mark.parametrize("case", list(ADD_TO_RUN))
def test_output_report_and_subtract_refuse(tmp_path, capfd, case):
    breaker, fragment = ADD_TO_RUN[case]
    args = breaker(tmp_path)
    assert_refused(capfd, args, fragment, tmp_path)


def test_output_replacing_refuses_a_device_even_when_asked_directly(tmp_path):
    """The last defence: the write-then-rename itself never renames over what is not a regular file."""
    from lorefine_mpi.errors import InputError
    from lorefine_mpi.io.files import replacing

    os.mkfifo(tmp_path / "pipe")
    before = snapshot(tmp_path)
    for target in ("/dev/full", tmp_path / "pipe", tmp_path):
        with pytest.raises(InputError, match="not a regular file"):
            with replacing(target) as tmp:
                tmp.write_text("x")
    assert snapshot(tmp_path) == before
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


def test_output_what_lorefine_made_is_listed_and_a_changed_file_is_not_its(tmp_path):
    from lorefine_mpi.io import files
    from lorefine_mpi.io.star import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "one")
    assert files.made_by_lorefine(tmp_path / "a.txt") and files.foreign_entry(tmp_path) is None
    shutil.copy(tmp_path / "a.txt", tmp_path / "b.txt")
    assert not files.made_by_lorefine(tmp_path / "b.txt") and files.foreign_entry(tmp_path) == tmp_path / "b.txt"
    (tmp_path / "b.txt").unlink()
    (tmp_path / "a.txt").write_text("two!")
    assert not files.made_by_lorefine(tmp_path / "a.txt")
