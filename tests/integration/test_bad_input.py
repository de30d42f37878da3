"""Every user mistake: one line on stderr naming the file, key or value, exit status 2, nothing written."""

import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

DATA = Path(__file__).resolve().parents[1] / "data"


def make_dataset(folder: Path) -> Path:
    """A valid config + inputs (box 48 phantom, 24 particles) in ``folder``; returns the config path."""
    for name in ("phantom_whole.mrc", "phantom_mask_module_1.mrc", "phantom_mask_module_2.mrc", "proj_noctf.star", "proj_noctf.mrcs"):
        shutil.copy(DATA / name, folder / name)
    config = {
        "particles": "proj_noctf.star",
        "consensus_map": "phantom_whole.mrc",
        "modules": [{"name": "large", "mask": "phantom_mask_module_1.mrc"}, {"name": "small", "mask": "phantom_mask_module_2.mrc"}],
        "search": {"strategy": "separate", "cone_half_angle_deg": 10, "angular_step_deg": 2, "psi_half_range_deg": 6,
                   "psi_step_deg": 2, "max_shift_px": 4, "shift_step_px": 1, "n_random_angles": 10},
        "score": {"mode": "subtract"},
        "iterations": 1,
        "output": "out/",
        "seed": 1,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "config.yaml"


def edit_config(change):
    def apply(folder):
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        change(cfg)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return apply


def edit_star(change):
    def apply(folder):
        lines = (folder / "proj_noctf.star").read_text().splitlines()
        (folder / "proj_noctf.star").write_text("\n".join(change(lines)) + "\n")
    return apply


def write_mrc(name, make):
    def apply(folder):
        with mrcfile.open(folder / name) as m:
            data, voxel = np.array(m.data), m.voxel_size.x
        with mrcfile.new(folder / name, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(make(data), dtype=np.float32))
            m.voxel_size = voxel
    return apply


def particle_rows(lines):
    return [i for i, l in enumerate(lines) if "@" in l]


def remove_column(lines, name):
    header = [i for i, l in enumerate(lines) if l.startswith("_rln") and i > max(j for j, l2 in enumerate(lines) if l2.startswith("data_particles"))]
    names = [lines[i].split()[0] for i in header]
    j = names.index(name)
    out = [l for i, l in enumerate(lines) if i != header[j]]
    return [" ".join(p for k, p in enumerate(l.split()) if k != j) if "@" in l else l for l in out]


def set_image_index(lines, index):
    i = particle_rows(lines)[0]
    parts = lines[i].split()
    parts[0] = f"{index:06d}@proj_noctf.mrcs"
    lines[i] = " ".join(parts)
    return lines


def duplicate_name(lines):
    rows = particle_rows(lines)
    first = lines[rows[0]].split()[0]
    parts = lines[rows[1]].split()
    parts[0] = first
    lines[rows[1]] = " ".join(parts)
    return lines


def set_optics_pixel(lines, value):
    i = next(i for i, l in enumerate(lines) if l.startswith("opticsGroup1"))
    parts = lines[i].split()
    parts[6] = value
    lines[i] = " ".join(parts)
    return lines


def add_px_origin(lines):
    i = next(i for i, l in enumerate(lines) if l.startswith("_rlnOpticsGroup #7"))
    lines.insert(i + 1, "_rlnOriginX #14")
    return [l + " 1.0" if "@" in l else l for l in lines]


def half_maps(*names):
    return edit_config(lambda c: c.update(consensus_half_maps=list(names)))


def cropped_half_map(folder):
    with mrcfile.open(folder / "phantom_whole.mrc") as m:
        data, voxel = np.array(m.data), m.voxel_size.x
    with mrcfile.new(folder / "half_small.mrc") as m:
        m.set_data(np.ascontiguousarray(data[:32, :32, :32]))
        m.voxel_size = voxel
    half_maps("half_small.mrc", "phantom_whole.mrc")(folder)


def unreadable_output(folder):
    (folder / "blocker").write_text("a file, not a folder")
    edit_config(lambda c: c.update(output="blocker/out"))(folder)


CASES = {
    "missing STAR": (edit_config(lambda c: c.update(particles="nope.star")), "nope.star"),
    "missing map": (edit_config(lambda c: c.update(consensus_map="nope.mrc")), "nope.mrc"),
    "missing mask": (edit_config(lambda c: c["modules"][0].update(mask="nomask.mrc")), "nomask.mrc"),
    "missing stack": (lambda f: (f / "proj_noctf.mrcs").unlink(), "proj_noctf.mrcs"),
    "unreadable STAR": (lambda f: (f / "proj_noctf.star").write_bytes(b"\x00\xff garbage \x00"), "proj_noctf.star"),
    "STAR without a required column": (edit_star(lambda l: remove_column(l, "_rlnAngleTilt")), "_rlnAngleTilt"),
    "3.0/3.1 columns mixed": (edit_star(add_px_origin), "mixes STAR 3.0 and 3.1"),
    "image index beyond its stack": (edit_star(lambda l: set_image_index(l, 99)), "beyond the stack"),
    "empty STAR": (edit_star(lambda l: [x for x in l if "@" not in x]), "empty"),
    "duplicate image names": (edit_star(duplicate_name), "duplicate image name"),
    "pixel size of STAR differs from map": (edit_star(lambda l: set_optics_pixel(l, "3.5")), "pixel size"),
    "mask box differs from map box": (write_mrc("phantom_mask_module_1.mrc", lambda d: d[:32, :32, :32]), "mask box"),
    "mask values outside [0, 1]": (write_mrc("phantom_mask_module_2.mrc", lambda d: d * 3), "[0, 1]"),
    "empty mask": (write_mrc("phantom_mask_module_1.mrc", lambda d: d * 0), "empty"),
    "NaN in images": (write_mrc("proj_noctf.mrcs", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 5, np.nan, d)), "NaN"),
    "Inf in images": (write_mrc("proj_noctf.mrcs", lambda d: np.where(np.arange(d.size).reshape(d.shape) == 7, np.inf, d)), "Inf"),
    "odd box": (write_mrc("phantom_whole.mrc", lambda d: d[:47, :47, :47]), "odd"),
    "YAML syntax error": (lambda f: (f / "config.yaml").write_text("particles: [unclosed\nseed: 1\n"), "YAML syntax error"),
    "unknown key with suggestion": (edit_config(lambda c: c["search"].update(cone_half_angle=5)), "did you mean 'cone_half_angle_deg'"),
    "unknown top-level key": (edit_config(lambda c: c.update(iteration=2)), "did you mean 'iterations'"),
    "wrong type": (edit_config(lambda c: c.update(iterations="two")), "iterations: must be auto or a whole number"),
    "negative step": (edit_config(lambda c: c["search"].update(angular_step_deg=-2)), "search.angular_step_deg"),
    "zero step": (edit_config(lambda c: c["search"].update(psi_step_deg=0)), "search.psi_step_deg"),
    "cone half-angle above 90": (edit_config(lambda c: c["search"].update(cone_half_angle_deg=120)), "search.cone_half_angle_deg: must be in (0, 90], got 120"),
    "negative cone": (edit_config(lambda c: c["search"].update(cone_half_angle_deg=-5)), "search.cone_half_angle_deg: must be in (0, 90], got -5"),
    "cone narrower than the grid": (edit_config(lambda c: c["search"].update(cone_half_angle_deg=1, angular_step_deg=3)),
                                    "search.cone_half_angle_deg: must be >= search.angular_step_deg (3)"),
    "bad strategy": (edit_config(lambda c: c["search"].update(strategy="greedy")), "search.strategy"),
    "bad angle refinement": (edit_config(lambda c: c["search"].update(angle_refinement="cubic")), "search.angle_refinement"),
    "bad B-factor": (edit_config(lambda c: c.update(postprocess={"bfactor": "sharp"})), "postprocess.bfactor: must be auto or a B-factor"),
    "unknown postprocess key": (edit_config(lambda c: c.update(postprocess={"locres_step": 10})), "did you mean 'locres_step_angstrom'"),
    "local resolution not a boolean": (edit_config(lambda c: c.update(postprocess={"local_resolution": "sometimes"})),
                                       "postprocess.local_resolution: expected one of true, false"),
    "consensus half maps not a pair": (edit_config(lambda c: c.update(consensus_half_maps="phantom_whole.mrc")),
                                       "consensus_half_maps: expected a list of two MRC files"),
    "missing consensus half map": (half_maps("nohalf.mrc", "phantom_whole.mrc"), "nohalf.mrc"),
    "consensus half map of another box": (cropped_half_map, "half_small.mrc: shape (32, 32, 32); expected the consensus map's (48, 48, 48)"),
    "consensus half maps without half sets": (half_maps("phantom_whole.mrc", "phantom_whole.mrc"), "without _rlnRandomSubset"),
    "duplicate module name": (edit_config(lambda c: c["modules"][1].update(name="large")), "duplicate module name"),
    "output folder not writable": (unreadable_output, "output"),
    "missing config file": (lambda f: (f / "config.yaml").unlink(), "config.yaml"),
}


# refine runs the same validation before any heavy work; a few cases show it
REFINE_CASES = ["missing STAR", "mask values outside [0, 1]", "unknown key with suggestion", "odd box", "output folder not writable"]


@pytest.mark.parametrize("command,case", [("check", c) for c in CASES] + [("refine", c) for c in REFINE_CASES])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, case, command):
    config = make_dataset(tmp_path)
    breaker, fragment = CASES[case]
    breaker(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", command, str(config)], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_valid_inputs_pass_check_with_a_summary(tmp_path):
    config = make_dataset(tmp_path)
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "check", str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for expected in ("particles        24", "box              48 px", "large: mask volume", "centre of mass", "orientations ("):
        assert expected in done.stdout
    assert done.stdout.count("CCC evaluations") == 1 and "CCC evaluations per particle and module" in done.stdout  # said once
    assert not (tmp_path / "out").exists()
