"""Hostile suite (issue 30), classes *cost* (resource bombs inside the documented ranges), *plausibility* (physically
absurd but finite inputs) and *damaged* (files that cannot be read as what they claim, any index, any locale).
`check` and `refine` refuse the same inputs in one line, status 2, nothing written, before any heavy work; where real
data can legitimately be odd, `check` warns instead."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from hostile_cases import (
    assert_refused,
    assert_runs_with_warning,
    copy_data,
    ctf_run,
    edit_optics,
    lorefine,
    set_config,
    set_header_float,
    set_header_int,
    set_search,
    write_mrc,
    yaml_file,
    zero_header,
)
from runs import DATA, LOREFINE, edit_config, edit_star, make_run, messages, rewrite_map

from lorefine_mpi.refine import cost

BOTH = ["check", "refine"]


def refused_by_both(capfd, tmp_path, config, fragment, also=()):
    for command in BOTH:
        assert_refused(capfd, [command, config], fragment, tmp_path, also=also)


# == cost: what a setting costs, before anything is allocated =========================================

BOMBS = {
    "a 90° cone at 0.05° steps (the issue's example)": ({"cone_half_angle_deg": 90, "angular_step_deg": 0.05}, "search.cone_half_angle_deg 90"),
    "a 90° cone at 0.3° steps": ({"cone_half_angle_deg": 90, "angular_step_deg": 0.3}, "× the work of a sane run"),
    "a fine simultaneous grid (the issue's example)": ({"strategy": "simultaneous", "cone_half_angle_deg": 20, "angular_step_deg": 0.5,
                                                        "psi_step_deg": 0.5, "psi_half_range_deg": 20}, "search.strategy simultaneous"),
    "a 45° cone at 1° with ψ ±45° at 1°": ({"strategy": "simultaneous", "cone_half_angle_deg": 45, "angular_step_deg": 1, "psi_step_deg": 1,
                                          "psi_half_range_deg": 45}, "CCC evaluations per particle"),
    "shifts ±32 px in a 30° cone": ({"strategy": "simultaneous", "max_shift_px": 32, "cone_half_angle_deg": 30}, "search.max_shift_px 32"),
    "ψ ±180° in 0.01° steps": ({"psi_half_range_deg": 180, "psi_step_deg": 0.01}, "search.psi_step_deg 0.01"),
    "a 0.01° grid": ({"cone_half_angle_deg": 0.02, "angular_step_deg": 0.01}, "search.angular_step_deg"),
    "a 60° cone at 0.2° with the separate strategy": ({"cone_half_angle_deg": 60, "angular_step_deg": 0.2}, "lorefine refuses more than 100 ×"),
    "a 90° cone at 0.5°, simultaneous": ({"strategy": "simultaneous", "cone_half_angle_deg": 90, "angular_step_deg": 0.5}, "search.strategy simultaneous"),
    "ψ ±180° in 0.02° steps in a 10° cone, simultaneous": ({"strategy": "simultaneous", "psi_half_range_deg": 180, "psi_step_deg": 0.02,
                                                             "cone_half_angle_deg": 10}, "search.psi_step_deg 0.02"),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_cost_search_bombs_are_refused_naming_the_keys(tmp_path, capfd, case):
    config = make_run(tmp_path)
    values, fragment = BOMBS[case]
    set_search(config, **values)
    refused_by_both(capfd, tmp_path, config, fragment)


CLASS_GRIDS = {0.001: "parallel.class_spacing_deg: 0.001", 0.002: "GiB (physical memory)", 0.003: "needs at least", 0.01: "(class grid)"}


@pytest.mark.parametrize("spacing", list(CLASS_GRIDS))
def test_cost_a_fine_projection_class_grid_is_refused_by_its_memory(tmp_path, capfd, spacing):
    """The issue's ``class_spacing_deg: 0.001``: check itself used to run out of memory."""
    config = make_run(tmp_path)
    edit_config(config, lambda c: c["parallel"].update(class_spacing_deg=spacing))
    refused_by_both(capfd, tmp_path, config, CLASS_GRIDS[spacing], also=["this machine allows"])


def test_cost_a_modules_own_psi_range_is_named(tmp_path, capfd):
    config = make_run(tmp_path)
    edit_config(config, lambda c: (c["modules"][0].update(psi_half_range_deg=180, cone_half_angle_deg=10), c["search"].update(psi_step_deg=0.01)))
    refused_by_both(capfd, tmp_path, config, "modules[0].psi_half_range_deg 180")


def test_cost_a_modules_own_cone_is_named(tmp_path, capfd):
    config = make_run(tmp_path)
    edit_config(config, lambda c: (c["modules"][1].update(cone_half_angle_deg=90), c["search"].update(angular_step_deg=0.25)))
    refused_by_both(capfd, tmp_path, config, "modules[1].cone_half_angle_deg 90")


@pytest.mark.parametrize("limit_mib,padding,fragment", [(64, 4, "reconstruction.padding: 4"), (12, 2, "reconstruction.padding: 2"),
                                                        (96, 4, "accumulators")])
def test_cost_memory_beyond_the_machine_is_refused(tmp_path, capfd, monkeypatch, limit_mib, padding, fragment):
    """A smaller machine (or a Slurm job's --mem) is emulated by the limit lorefine reads."""
    monkeypatch.setattr(cost, "memory_limit_bytes", lambda: (limit_mib * 2.0**20, "the cgroup's memory limit (e.g. Slurm's --mem)"))
    config = make_run(tmp_path)
    edit_config(config, lambda c: c["reconstruction"].update(padding=padding))
    refused_by_both(capfd, tmp_path, config, fragment, also=["this machine allows", "Slurm's --mem"])


@pytest.mark.parametrize("box", [1024, 768])
def test_cost_simulate_refuses_a_box_beyond_the_memory(tmp_path, capfd, box):
    config = yaml_file(tmp_path / "sim.yaml", {"output": "data", "n_particles": 10, "box": box})
    assert_refused(capfd, ["simulate", config], f"box: {box} needs at least", tmp_path, also=["module spectrum"])


def test_cost_reconstruct_refuses_padding_beyond_the_memory(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(cost, "memory_limit_bytes", lambda: (32 * 2.0**20, "physical memory"))
    make_run(tmp_path)
    assert_refused(capfd, ["reconstruct", "--particles", tmp_path / "particles.star", "--project-dir", tmp_path, "--out", tmp_path / "m.mrc",
                           "--padding", "4"], "--padding: 4 needs at least", tmp_path)


HEAVY_BUT_SANE = {
    "n_random_angles 10⁹ (capped by the candidates)": {"n_random_angles": 1_000_000_000},
    "the paper's exhaustive search": {"strategy": "simultaneous", "cone_half_angle_deg": 10, "angular_step_deg": 2, "psi_half_range_deg": 6,
                                      "max_shift_px": 4},
    "1° steps in a 10° cone, simultaneous": {"strategy": "simultaneous", "angular_step_deg": 1, "psi_step_deg": 1},
}


@pytest.mark.parametrize("case", list(HEAVY_BUT_SANE))
def test_cost_heavy_but_sane_settings_pass_with_their_figures(tmp_path, capfd, case):
    config = make_run(tmp_path)
    set_search(config, **HEAVY_BUT_SANE[case])
    code, out, err = lorefine(capfd, "check", config)
    assert code == 0, err
    assert "memory           at least" in out and "× a sane run" in out


def test_cost_facility_defaults_are_not_refused():
    """Box 256, CTF, three modules, 100,000 particles, every other setting the default: within this machine (23 GiB)."""
    from lorefine_mpi.config.schema import Config, ModuleConfig

    cfg = Config(particles="p.star", consensus_map="c.mrc", modules=tuple(ModuleConfig(f"m{i}", f"m{i}.mrc") for i in range(3)), output="o")
    figures = cost.estimate(cfg, 100_000, 256, 1.0, [0.15, 0.1, 0.05])
    cost.check_cost(figures, cfg, 256, limit=(23 * 2.0**30, "physical memory"))
    assert 2 * 2**30 < figures.memory_bytes < 12 * 2**30 and figures.multiple < 1


# == plausibility ===========================================================================================

CTF_VALUES = {
    "rlnCtfScalefactor 0 (the issue's example)": ("rlnCtfScalefactor", "0", "_rlnCtfScalefactor of particle 4 is 0; expected a factor in (0, 100]"),
    "rlnCtfScalefactor -1": ("rlnCtfScalefactor", "-1", "_rlnCtfScalefactor of particle 4 is -1"),
    "rlnCtfScalefactor 1e6": ("rlnCtfScalefactor", "1e6", "is 1e+06; expected a factor"),
    "rlnCtfBfactor -1e6 (the issue's example)": ("rlnCtfBfactor", "-1e6", "_rlnCtfBfactor of particle 4 is -1e+06 Å²; expected |B| ≤ 1000 Å²"),
    "rlnCtfBfactor 1e6": ("rlnCtfBfactor", "1000000", "is 1e+06 Å²"),
    "rlnCtfBfactor -1500": ("rlnCtfBfactor", "-1500", "is -1500 Å²"),
    "rlnDefocusU 1e9": ("rlnDefocusU", "1e9", "_rlnDefocusU of particle 4 is 1e+09 Å; expected at most 200,000 Å"),
    "rlnDefocusU -1e9": ("rlnDefocusU", "-1e9", "_rlnDefocusU of particle 4 is -1e+09 Å"),
    "rlnDefocusV 3e5": ("rlnDefocusV", "300000", "_rlnDefocusV of particle 4 is 300000 Å"),
    "rlnOriginXAngst 1e6 (the issue's example)": ("rlnOriginXAngst", "1e6", "_rlnOriginXAngst of particle 4 is 1e+06 Å (250000 px); expected within ±24 px"),
    "rlnOriginYAngst -1e6": ("rlnOriginYAngst", "-1e6", "_rlnOriginYAngst of particle 4 is -1e+06 Å"),
    "rlnOriginXAngst just beyond half the box": ("rlnOriginXAngst", "100", "is 100 Å (25 px); expected within ±24 px"),
    "rlnCtfScalefactor 101": ("rlnCtfScalefactor", "101", "is 101; expected a factor in (0, 100]"),
}


@pytest.mark.parametrize("case", list(CTF_VALUES))
def test_plausible_particle_values(tmp_path, capfd, case):
    config = ctf_run(tmp_path)
    column, value, fragment = CTF_VALUES[case]
    edit_star(tmp_path / "particles.star", column, {3: value})
    refused_by_both(capfd, tmp_path, config, fragment)


OPTICS = {
    "rlnVoltage 0": ("rlnVoltage", "0", "_rlnVoltage 0 kV; expected 10–1000 kV"),
    "rlnVoltage -300": ("rlnVoltage", "-300", "_rlnVoltage -300 kV"),
    "rlnVoltage 3 (V for kV?)": ("rlnVoltage", "3", "_rlnVoltage 3 kV"),
    "rlnVoltage 300000 (V, not kV)": ("rlnVoltage", "300000", "_rlnVoltage 300000 kV"),
    "rlnSphericalAberration 1e6": ("rlnSphericalAberration", "1e6", "_rlnSphericalAberration 1e+06 mm; expected -1–20 mm"),
    "rlnSphericalAberration -5": ("rlnSphericalAberration", "-5", "_rlnSphericalAberration -5 mm"),
    "rlnSphericalAberration 2700 (µm for mm?)": ("rlnSphericalAberration", "2700", "_rlnSphericalAberration 2700 mm"),
    "rlnAmplitudeContrast 1.5": ("rlnAmplitudeContrast", "1.5", "_rlnAmplitudeContrast must be in [0, 1), got 1.5"),
    "rlnAmplitudeContrast -0.1": ("rlnAmplitudeContrast", "-0.1", "_rlnAmplitudeContrast must be in [0, 1), got -0.1"),
    "rlnAmplitudeContrast 10 (% for a fraction?)": ("rlnAmplitudeContrast", "10", "got 10"),
}


@pytest.mark.parametrize("case", list(OPTICS))
def test_plausible_optics_values(tmp_path, capfd, case):
    config = ctf_run(tmp_path)
    column, value, fragment = OPTICS[case]
    edit_optics(tmp_path / "particles.star", column, value)
    refused_by_both(capfd, tmp_path, config, fragment)


WARNINGS = {
    "a small CTF scale factor": (lambda p: edit_star(p, "rlnCtfScalefactor", {2: "0.05"}), "_rlnCtfScalefactor of particle 3 is 0.05"),
    "overfocus": (lambda p: edit_star(p, "rlnDefocusU", {5: "-8000"}), "overfocus (negative defocus"),
    "a slightly negative Cs": (lambda p: edit_optics(p, "rlnSphericalAberration", "-0.01"), "is negative (a Cs corrector"),
    "a defocus in µm, not Å": (lambda p: edit_star(p, "rlnDefocusV", {7: "1.8"}), "is it in µm? (RELION: Å)"),
}


@pytest.mark.parametrize("case", list(WARNINGS))
def test_plausible_but_odd_values_give_a_warning(tmp_path, capfd, case):
    config = ctf_run(tmp_path)
    change, fragment = WARNINGS[case]
    change(tmp_path / "particles.star")
    assert_runs_with_warning(capfd, ["check", config], fragment)


def test_plausible_ctf_values_are_not_judged_when_the_ctf_is_not_used(tmp_path, capfd):
    config = ctf_run(tmp_path)
    set_config(config, score={"mode": "subtract", "ctf": False})
    edit_star(tmp_path / "particles.star", "rlnCtfScalefactor", {0: "0"})
    edit_optics(tmp_path / "particles.star", "rlnVoltage", "0")
    code, out, err = lorefine(capfd, "check", config)
    assert code == 0, err


SETTINGS = {
    "a module's centre 10⁶ px away (the issue's example)": (lambda c: edit_config(c, lambda x: x["modules"][0].update(centre_px=[1e6, 0, 0])),
                                                           "modules[0].centre_px: [1000000.0, 0.0, 0.0] px from the box centre"),
    "a centre just outside the box": (lambda c: edit_config(c, lambda x: x["modules"][1].update(centre_px=[0, 0, -25])), "within ±24 px"),
    "a centre outside in y": (lambda c: edit_config(c, lambda x: x["modules"][1].update(centre_px=[0, 30.5, 0])), "modules[1].centre_px"),
    "a band coarser than the lowest ring (the issue's example)": (lambda c: set_search(c, max_resolution_angstrom=1000),
                                                                  "search.max_resolution_angstrom: 1000 Å is 0.19 Fourier rings"),
    "a band of one ring": (lambda c: set_search(c, max_resolution_angstrom=150), "is 1.3 Fourier rings"),
    "a band of two rings": (lambda c: set_search(c, max_resolution_angstrom=80), "expected a finer resolution, at most 64 Å"),
    "a sub-pixel score mask (the issue's example)": (lambda c: set_search(c, mask_diameter_px=0.5), "search.mask_diameter_px: 0.5 px holds 1 pixels"),
    "a score mask of 3 px": (lambda c: set_search(c, mask_diameter_px=3), "expected at least 4 px"),
    "a mask scaled to a maximum of 0.02 (the issue's example)": (
        lambda c: rewrite_map(c.parent / "phantom_mask_module_2.mrc", lambda d: d * 0.02 / d.max()), "the mask's largest value is 0.02"),
    "a mask scaled to 0.4": (lambda c: rewrite_map(c.parent / "phantom_mask_module_1.mrc", lambda d: d * 0.4 / d.max()), "expected a maximum of 1"),
    "a contrast-inverted map (the issue's example)": (lambda c: rewrite_map(c.parent / "phantom_whole.mrc", lambda d: -d),
                                                      "is the map contrast-inverted"),
    "an inverted map with an offset": (lambda c: rewrite_map(c.parent / "phantom_whole.mrc", lambda d: 5 - d), "darker inside modules[0] (large)'s mask"),
    "a mask on the solvent": (lambda c: rewrite_map(c.parent / "phantom_mask_module_2.mrc", lambda d: np.roll(d, 24, axis=(0, 1, 2))),
                              "darker inside modules[1] (small)'s mask"),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_plausible_settings_and_maps(tmp_path, capfd, case):
    config = make_run(tmp_path)
    change, fragment = SETTINGS[case]
    change(config)
    refused_by_both(capfd, tmp_path, config, fragment)


def test_plausible_a_band_finer_than_nyquist_and_a_soft_mask_below_one_give_warnings(tmp_path, capfd):
    config = make_run(tmp_path)
    set_search(config, max_resolution_angstrom=1)
    rewrite_map(tmp_path / "phantom_mask_module_2.mrc", lambda d: d * 0.8 / d.max())
    warnings = assert_runs_with_warning(capfd, ["check", config], "is finer than the search's band reaches")
    assert any("the mask's largest value is 0.8" in w for w in warnings)


RECONSTRUCT_VALUES = {
    "rlnCtfBfactor -1e6 (the issue's example: NaN half maps, then LinAlgError)": ("rlnCtfBfactor", "-1e6", "_rlnCtfBfactor of particle 3 is -1e+06 Å²"),
    "rlnCtfScalefactor 0": ("rlnCtfScalefactor", "0", "_rlnCtfScalefactor of particle 3 is 0"),
    "rlnOriginYAngst 1e6": ("rlnOriginYAngst", "1e6", "_rlnOriginYAngst of particle 3 is 1e+06 Å"),
}


@pytest.mark.parametrize("case", list(RECONSTRUCT_VALUES))
def test_plausible_reconstruct_refuses_absurd_particles(tmp_path, capfd, case):
    ctf_run(tmp_path)
    column, value, fragment = RECONSTRUCT_VALUES[case]
    edit_star(tmp_path / "particles.star", column, {2: value})
    assert_refused(capfd, ["reconstruct", "--particles", tmp_path / "particles.star", "--project-dir", tmp_path, "--out", tmp_path / "m.mrc"],
                   fragment, tmp_path)


def _star30(folder, origin_x_px="0"):
    """particles.star rewritten as STAR 3.0 (no data_optics, origins in px, the pixel size per particle)."""
    from lorefine_mpi.io.star import read_star

    table = read_star(folder / "particles.star", folder)
    rows = [f"{name} {np.rad2deg(r):.6f} {np.rad2deg(t):.6f} {np.rad2deg(p):.6f} {o[0]:.6f} {o[1]:.6f} 4.0 {s}"
            for name, r, t, p, o, s in zip(table.image_name, table.rot_rad, table.tilt_rad, table.psi_rad, table.origin_px, table.random_subset)]
    first = rows[0].split()
    first[4] = origin_x_px
    rows[0] = " ".join(first)
    columns = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnImagePixelSize", "rlnRandomSubset"]
    text = "data_\nloop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(columns)) + "\n".join(rows) + "\n"
    (folder / "particles.star").write_text(text)


@pytest.mark.parametrize("value", ["1e6", "-30"])
def test_plausible_star30_origins_in_pixels(tmp_path, capfd, value):
    config = make_run(tmp_path)
    _star30(tmp_path, value)
    refused_by_both(capfd, tmp_path, config, f"_rlnOriginX of particle 1 is {float(value):g} px")


def _half_maps(how):
    def apply(config):
        folder = config.parent
        edit_star(folder / "particles.star", "rlnRandomSubset", {i: 1 + i % 2 for i in range(24)})
        if how == "copy":
            shutil.copy(folder / "phantom_whole.mrc", folder / "h2.mrc")
        elif how == "symlink":
            (folder / "h2.mrc").symlink_to(folder / "phantom_whole.mrc")
        elif how == "hard link":
            os.link(folder / "phantom_whole.mrc", folder / "h2.mrc")
        set_config(config, consensus_half_maps=["phantom_whole.mrc", "phantom_whole.mrc" if how == "same name" else "h2.mrc"])
    return apply


@pytest.mark.parametrize("how,fragment", [("same name", "the same file as"), ("copy", "holds the same values as"), ("symlink", "the same file as"),
                                          ("hard link", "the same file as")])
def test_plausible_the_consensus_half_maps_are_two_maps(tmp_path, capfd, how, fragment):
    config = make_run(tmp_path)
    _half_maps(how)(config)
    refused_by_both(capfd, tmp_path, config, fragment, also=["consensus_half_maps to be two different maps"])


@pytest.mark.parametrize("command", ["postprocess", "fsc"])
@pytest.mark.parametrize("how", ["same file", "copy"])
def test_plausible_postprocess_and_fsc_need_two_different_maps(tmp_path, capfd, command, how):
    copy_data(tmp_path, "phantom_module_1.mrc", "phantom_mask_module_1.mrc")
    other = tmp_path / "phantom_module_1.mrc"
    if how == "copy":
        other = tmp_path / "copy.mrc"
        shutil.copy(tmp_path / "phantom_module_1.mrc", other)
    first, mask = tmp_path / "phantom_module_1.mrc", tmp_path / "phantom_mask_module_1.mrc"
    args = (["postprocess", "--half1", first, "--half2", other, "--mask", mask, "--out", tmp_path / "pp"] if command == "postprocess"
            else ["fsc", first, other])
    assert_refused(capfd, args, "the same file as" if how == "same file" else "holds the same values as", tmp_path)


def _complex(name):
    def apply(config):
        path = config.parent / name
        with __import__("mrcfile").open(path) as m:
            data = np.array(m.data)
        write_mrc(path, data.astype(np.complex64))
    return apply


@pytest.mark.parametrize("name", ["phantom_whole.mrc", "phantom_mask_module_1.mrc", "proj_noctf.mrcs"])
def test_plausible_a_complex_valued_mrc_is_refused(tmp_path, capfd, name):
    """The issue's example: the imaginary part used to be dropped with a raw numpy warning."""
    config = make_run(tmp_path)
    _complex(name)(config)
    refused_by_both(capfd, tmp_path, config, f"{name}: its data are complex float32 (MRC mode 4); expected real values")


STAR_DUPLICATES = {
    "a particle column twice (the issue's example)": (lambda t: t.replace("_rlnAnglePsi #4\n", "_rlnAnglePsi #4\n_rlnAnglePsi #4b\n", 1),
                                                      "column _rlnAnglePsi appears twice in block data_particles"),
    "an optics column twice": (lambda t: t.replace("_rlnVoltage #4\n", "_rlnVoltage #4\n_rlnVoltage #4b\n", 1), "column _rlnVoltage appears twice"),
    "two optics rows with one number (the issue's example)": (lambda t: _second_optics_row(t), "data_optics has two rows with _rlnOpticsGroup 1"),
    "the particle block twice": (lambda t: t + t[t.index("data_particles"):], "block data_particles appears twice"),
}


def _second_optics_row(text):
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("opticsGroup1"))
    other = lines[row].split()
    other[0] = "opticsGroup2"
    other[3] = "200.000000"
    lines.insert(row + 1, " ".join(other))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", list(STAR_DUPLICATES))
def test_plausible_star_columns_blocks_and_optics_groups_are_unique(tmp_path, capfd, case):
    config = ctf_run(tmp_path)
    change, fragment = STAR_DUPLICATES[case]
    star = tmp_path / "particles.star"
    text = star.read_text()
    if "#4b" in change(text):  # a second column means a value more on every row
        text = _with_extra_column(text, change)
    else:
        text = change(text)
    star.write_text(text)
    refused_by_both(capfd, tmp_path, config, fragment)


def _with_extra_column(text, change):
    """The column added by ``change`` (a header line ``#4b``) with a value on every row of its block."""
    changed = change(text).replace("#4b", "#99")
    lines = changed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.endswith("#99"))
    block_rows = []
    for i in range(header + 1, len(lines)):
        if lines[i].startswith("_"):
            continue
        if not lines[i].strip() or lines[i].startswith(("data_", "#", "loop_")):
            if block_rows:
                break
            continue
        block_rows.append(i)
    for i in block_rows:
        lines[i] += " 1.0"
    return "\n".join(lines) + "\n"


# == damaged files ============================================================================================

DAMAGED_MAPS = {
    "an all-zero header (the issue's example)": (zero_header, "its header gives 0 × 0 × 0 voxels"),
    "a voxel size of 0": (lambda p: set_header_float(p, 10, 0.0), "its header gives a voxel size of 0 Å"),
    "a sampling of 0 (voxel size ∞)": (lambda p: set_header_int(p, 7, 0), "its header gives a voxel size of inf Å"),
    "a negative voxel size": (lambda p: set_header_float(p, 10, -192.0), "its header gives a voxel size of -4 Å"),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "cannot read it as an MRC map"),
    "an empty file": (lambda p: p.write_bytes(b""), "cannot read it as an MRC map"),
    "a truncated file": (lambda p: os.truncate(p, 2000), "the file is truncated"),
    "a header that promises 10⁹ voxels": (lambda p: (set_header_int(p, 0, 1000), set_header_int(p, 1, 1000), set_header_int(p, 2, 1000)),
                                          "the file is truncated"),
    "a non-cubic map": (lambda p: rewrite_map(p, lambda d: d[:40]), "expected a cubic 3D map"),
    "a FIFO": (lambda p: (p.unlink(), os.mkfifo(p)), "is a FIFO (named pipe), not a regular file"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is a folder, not a regular file"),
    "an image stack (.mrcs)": (lambda p: shutil.copy(DATA / "proj_noctf.mrcs", p), "expected a cubic 3D map"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["phantom_whole.mrc", "phantom_mask_module_2.mrc"])
@pytest.mark.parametrize("case", list(DAMAGED_MAPS))
def test_damaged_maps_and_masks_are_one_line(tmp_path, capfd, case, which):
    config = make_run(tmp_path)
    damage, fragment = DAMAGED_MAPS[case]
    damage(tmp_path / which)
    refused_by_both(capfd, tmp_path, config, fragment, also=[which])


DAMAGED_STACKS = {
    "an all-zero header": (zero_header, "its header gives 0 × 0 × 0 voxels"),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(2).bytes(9000)), "cannot read it as an MRC stack"),
    "a FIFO": (lambda p: (p.unlink(), os.mkfifo(p)), "is a FIFO (named pipe), not a regular file"),
    "complex values": (lambda p: write_mrc(p, np.zeros((24, 48, 48), np.complex64)), "complex float32 (MRC mode 4)"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is a folder, not a regular file"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(DAMAGED_STACKS))
def test_damaged_stacks_are_one_line(tmp_path, capfd, case):
    config = make_run(tmp_path)
    damage, fragment = DAMAGED_STACKS[case]
    damage(tmp_path / "proj_noctf.mrcs")
    refused_by_both(capfd, tmp_path, config, fragment)


IMAGE_NAMES = {
    "a huge image number (the issue's example)": ("100000000000000000000000@proj_noctf.mrcs", "is beyond any stack"),
    "an image number beyond int32": ("99999999999@proj_noctf.mrcs", "is beyond any stack"),
    "an image number beyond the stack": ("000999@proj_noctf.mrcs", "beyond the stack, which holds 24 images"),
    "image 0": ("000000@proj_noctf.mrcs", "expected 000123@stack.mrcs (1-based index)"),
    "no stack": ("000001@", "expected 000123@stack.mrcs"),
    "a folder as the stack": ("000001@.", "not a regular file"),
}


@pytest.mark.parametrize("case", list(IMAGE_NAMES))
def test_damaged_image_names_are_one_line(tmp_path, capfd, case):
    config = make_run(tmp_path)
    name, fragment = IMAGE_NAMES[case]
    edit_star(tmp_path / "particles.star", "rlnImageName", {5: name})
    refused_by_both(capfd, tmp_path, config, fragment)


STAR_NUMBERS = {
    "an optics group number of 30 digits": ("rlnOpticsGroup", "1" * 30, "is not a plausible value"),
    "a half set of 30 digits": ("rlnRandomSubset", "2" * 30, "is not a plausible value"),
    "1e999 as an angle": ("rlnAngleTilt", "1e999", "expected a finite number"),
    "a word as a defocus": ("rlnDefocusU", "far", "expected numbers, got 'far'"),
    "optics group 0": ("rlnOpticsGroup", "0", "_rlnOpticsGroup 0 is not in the data_optics table"),
    "half set -1": ("rlnRandomSubset", "-1", "_rlnRandomSubset of particle 2 is -1; expected 1 or 2"),
    "a negative image number": ("rlnImageName", "-5@proj_noctf.mrcs", "expected 000123@stack.mrcs"),
}


@pytest.mark.parametrize("case", list(STAR_NUMBERS))
def test_damaged_star_numbers_are_one_line(tmp_path, capfd, case):
    config = make_run(tmp_path)
    column, value, fragment = STAR_NUMBERS[case]
    edit_star(tmp_path / "particles.star", column, {1: value})
    refused_by_both(capfd, tmp_path, config, fragment)


DAMAGED_FILES = {
    "the STAR file a FIFO": (lambda t, c: ((t / "particles.star").unlink(), os.mkfifo(t / "particles.star")), "is a FIFO (named pipe)"),
    "the STAR file a folder": (lambda t, c: ((t / "particles.star").unlink(), (t / "particles.star").mkdir()), "is a folder, not a regular file"),
    "the STAR file in UTF-16": (lambda t, c: (t / "particles.star").write_bytes((t / "particles.star").read_text().encode("utf-16")),
                                "cannot read it as a STAR file"),
    "the STAR file cut mid-row": (lambda t, c: (t / "particles.star").write_text((t / "particles.star").read_text()[:-40]), "values in block"),
    "the STAR file /dev/zero": (lambda t, c: set_config(c, particles="/dev/zero"), "is a character device, not a regular file"),
    "the config a folder": (lambda t, c: (c.unlink(), c.mkdir()), "is a folder, not a regular file"),
    "the config a list": (lambda t, c: c.write_text("- particles\n- output\n"), "expected a mapping of keys"),
    "the config empty": (lambda t, c: c.write_text(""), "expected a mapping of keys"),
    "the STAR file with only data_optics": (lambda t, c: (t / "particles.star").write_text(
        (t / "particles.star").read_text().split("# version 30001\n\ndata_particles")[0]), "no particle block"),
    "a STAR row with an unbalanced quote": (lambda t, c: edit_star(t / "particles.star", "rlnAngleRot", {3: '"12.0'}), "unbalanced quotes"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(DAMAGED_FILES))
def test_damaged_star_and_config_files_are_one_line(tmp_path, capfd, case):
    config = make_run(tmp_path)
    damage, fragment = DAMAGED_FILES[case]
    damage(tmp_path, config)
    refused_by_both(capfd, tmp_path, config, fragment)


@pytest.mark.timeout(120)
def test_damaged_a_fifo_config_is_refused_not_read(tmp_path, capfd):
    os.mkfifo(tmp_path / "pipe.yaml")
    for command in ("check", "refine", "simulate"):
        assert_refused(capfd, [command, tmp_path / "pipe.yaml"], "is a FIFO (named pipe), not a regular file", tmp_path)


FSC_INPUTS = {
    "two stacks (the issue's example)": (lambda t: [t / "proj_noctf.mrcs", t / "recon_noctf.mrcs"], "a stack of 24 images of 48 × 48 px (.mrcs)"),
    "a single image": (lambda t: (write_mrc(t / "img.mrc", np.ones((48, 48), np.float32)), [t / "img.mrc", t / "phantom_whole.mrc"])[1],
                       "expected a 3D map"),
    "a non-cubic map": (lambda t: (write_mrc(t / "flat.mrc", np.ones((4, 48, 48), np.float32)), [t / "phantom_whole.mrc", t / "flat.mrc"])[1],
                        "expected a cubic 3D map"),
    "an all-zero header": (lambda t: (zero_header(t / "phantom_whole.mrc"), [t / "phantom_whole.mrc", t / "phantom_module_1.mrc"])[1],
                           "its header gives 0 × 0 × 0 voxels"),
    "a complex map": (lambda t: (write_mrc(t / "c.mrc", np.ones((48, 48, 48), np.complex64)), [t / "c.mrc", t / "phantom_whole.mrc"])[1],
                      "(MRC mode 4)"),
    "a mask of maximum 0.02": (lambda t: (rewrite_map(t / "phantom_mask_module_1.mrc", lambda d: d * 0.02 / d.max()),
                                          [t / "phantom_whole.mrc", t / "phantom_module_1.mrc", "--mask", t / "phantom_mask_module_1.mrc"])[1],
                               "the mask's largest value is 0.02"),
    "a mask outside [0, 1]": (lambda t: (rewrite_map(t / "phantom_mask_module_1.mrc", lambda d: d * 3),
                                         [t / "phantom_whole.mrc", t / "phantom_module_1.mrc", "--mask", t / "phantom_mask_module_1.mrc"])[1],
                              "mask values must lie in [0, 1]"),
}


@pytest.mark.parametrize("case", list(FSC_INPUTS))
def test_damaged_fsc_inputs_are_one_line(tmp_path, capfd, case):
    copy_data(tmp_path, "proj_noctf.mrcs", "recon_noctf.mrcs", "phantom_whole.mrc", "phantom_module_1.mrc", "phantom_mask_module_1.mrc")
    make, fragment = FSC_INPUTS[case]
    assert_refused(capfd, ["fsc", *make(tmp_path)], fragment, tmp_path)


POSTPROCESS_HALVES = {
    "an all-zero header": (zero_header, "its header gives 0 × 0 × 0 voxels"),
    "complex values": (lambda p: write_mrc(p, np.ones((48, 48, 48), np.complex64)), "(MRC mode 4)"),
    "a FIFO": (lambda p: (p.unlink(), os.mkfifo(p)), "is a FIFO (named pipe)"),
    "a stack given as a half map": (lambda p: (p.unlink(), shutil.copy(DATA / "proj_noctf.mrcs", p.with_suffix(".mrcs"))), "(.mrcs); expected a 3D map"),
    "a voxel size of 0": (lambda p: set_header_float(p, 10, 0.0), "a voxel size of 0 Å"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(POSTPROCESS_HALVES))
def test_damaged_postprocess_half_maps_are_one_line(tmp_path, capfd, case):
    copy_data(tmp_path, "phantom_module_1.mrc", "phantom_module_2.mrc", "phantom_mask_module_1.mrc")
    damage, fragment = POSTPROCESS_HALVES[case]
    damage(tmp_path / "phantom_module_2.mrc")
    second = tmp_path / ("phantom_module_2.mrcs" if "stack" in case else "phantom_module_2.mrc")
    assert_refused(capfd, ["postprocess", "--half1", tmp_path / "phantom_module_1.mrc", "--half2", second, "--mask",
                           tmp_path / "phantom_mask_module_1.mrc", "--out", tmp_path / "pp"], fragment, tmp_path)


@pytest.mark.parametrize("case", ["an all-zero header", "complex values"])
def test_damaged_consensus_half_maps_are_one_line(tmp_path, capfd, case):
    config = make_run(tmp_path)
    edit_star(tmp_path / "particles.star", "rlnRandomSubset", {i: 1 + i % 2 for i in range(24)})
    shutil.copy(tmp_path / "phantom_whole.mrc", tmp_path / "h2.mrc")
    set_config(config, consensus_half_maps=["phantom_whole.mrc", "h2.mrc"])
    POSTPROCESS_HALVES[case][0](tmp_path / "h2.mrc")
    refused_by_both(capfd, tmp_path, config, POSTPROCESS_HALVES[case][1], also=["h2.mrc"])


@pytest.mark.parametrize("variables", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
                                                                       "PYTHONIOENCODING": "ascii:strict"}], ids=["ascii stdout", "POSIX locale"])
def test_damaged_locale_check_prints_ascii_and_errors_stay_one_line(tmp_path, variables):
    """The issue's example: a POSIX locale used to end in UnicodeEncodeError on "Å"."""
    config = make_run(tmp_path)
    env = {**os.environ, **variables}
    done = subprocess.run(LOREFINE + ["check", str(config)], capture_output=True, text=True, timeout=300, env=env, errors="replace")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "4.0000 A/px" in done.stdout and "Å" not in done.stdout
    edit_star(tmp_path / "particles.star", "rlnOriginXAngst", {0: "1e6"})
    done = subprocess.run(LOREFINE + ["check", str(config)], capture_output=True, text=True, timeout=300, env=env, errors="replace")
    lines = messages(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "is 1e+06 A (250000 px)" in lines[0], done.stderr[-2000:]


def test_damaged_a_resolved_config_is_written_in_utf8_whatever_the_locale(tmp_path):
    """Files lorefine writes (STAR, YAML, JSON, HTML) are UTF-8, so a POSIX locale cannot break them."""
    config = make_run(tmp_path / "dir_Å")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run(LOREFINE + ["check", str(config)], capture_output=True, timeout=300, env=env)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr[-2000:]
