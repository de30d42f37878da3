"""A RELION project as a facility scientist has one: `Refine3D/job010/run_data.star` whose image names start at
the project directory (`Extract/job005/...`), `run_class001.mrc`, masks from `MaskCreate/`, and lorefine run
from the project root. Every STAR file lorefine writes must open in RELION from that same root and mean
what lorefine meant: `relion_reconstruct` of it agrees with lorefine's map (FSC ≥ 0.9 to 0.8 × Nyquist)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lorefine_mpi.geometry import volumes
from lorefine_mpi.io.mrc import read_map
from lorefine_mpi.io.star import read_star, write_star
from lorefine_mpi.refine.subtracted import crop_volume
from lorefine_mpi.validation import fsc

DATA = Path(__file__).resolve().parents[1] / "data"
STACK = "Extract/job005/Particles/Micrographs/particles.mrcs"
N_PARTICLES = 240
relion = pytest.mark.skipif(shutil.which("relion_reconstruct") is None, reason="RELION is not installed")


def lorefine(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def write_star30(path, table, image_names):
    """The same particles as a RELION 3.0 STAR file: no optics table, origins in px, optics per particle."""
    columns = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnDetectorPixelSize",
               "rlnMagnification", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnDefocusU", "rlnDefocusV",
               "rlnDefocusAngle", "rlnRandomSubset"]
    lines = ["", "data_", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    deg = np.rad2deg
    for i in range(len(table)):
        lines.append(" ".join([image_names[i]] + [f"{v:.6f}" for v in (
            deg(table.rot_rad[i]), deg(table.tilt_rad[i]), deg(table.psi_rad[i]), *table.origin_px[i], 14.0, 35000.0, 300.0, 2.7, 0.1,
            table.defocus_u_angstrom[i], table.defocus_v_angstrom[i], deg(table.defocus_angle_rad[i]))] + [str(table.random_subset[i])]))
    path.write_text("\n".join(lines) + "\n")


def make_project(root: Path, source: str, star_version: str) -> Path:
    """A RELION-style project tree in ``root`` from the RELION-made ``source`` set (box 48, 4 Å/px); returns the config."""
    for folder in ("Extract/job005/Particles/Micrographs", "Refine3D/job010", "MaskCreate/job020", "MaskCreate/job021"):
        (root / folder).mkdir(parents=True)
    shutil.copy(DATA / f"{source}.mrcs", root / STACK)
    shutil.copy(DATA / "phantom_whole.mrc", root / "Refine3D/job010/run_class001.mrc")
    shutil.copy(DATA / "phantom_mask_module_1.mrc", root / "MaskCreate/job020/mask.mrc")
    shutil.copy(DATA / "phantom_mask_module_2.mrc", root / "MaskCreate/job021/mask.mrc")
    table = read_star(DATA / f"{source}.star").subset(slice(0, N_PARTICLES))
    names = [f"{i + 1:06d}@{STACK}" for i in table.image_index]
    star = root / "Refine3D/job010/run_data.star"
    if star_version == "3.0":
        write_star30(star, table, names)
    else:
        write_star(star, table, image_name=names)
    config = {
        "particles": "Refine3D/job010/run_data.star", "consensus_map": "Refine3D/job010/run_class001.mrc",
        "modules": [{"name": "large", "mask": "MaskCreate/job020/mask.mrc"}, {"name": "small", "mask": "MaskCreate/job021/mask.mrc"}],
        "search": {"cone_half_angle_deg": 2, "angular_step_deg": 2, "psi_half_range_deg": 2, "psi_step_deg": 2, "max_shift_px": 1,
                   "n_random_angles": 2},
        "score": {"ctf": source == "recon_ctf"},  # RELION made recon_noctf without a CTF, but its STAR has defocus values
        "subtracted": {"modules": "all", "box_px": 32},
        "output": "LoRefine/job030/", "seed": 2, "iterations": 1,
    }
    (root / "lorefine.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root / "lorefine.yaml"


def shells_fsc(a, b, voxel=4.0):
    """FSC of two maps from shell 1 to 0.8 × Nyquist."""
    return fsc.fsc(a, b, voxel).fsc[1 : int(0.8 * (a.shape[0] // 2)) + 1]


@pytest.fixture(scope="module", params=[("recon_noctf", "3.1"), ("recon_ctf", "3.0")], ids=["noctf-star31", "ctf-star30"])
def project(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"project_{request.param[0]}")
    make_project(root, *request.param)
    checked = lorefine("check", "lorefine.yaml", cwd=root)
    assert checked.returncode == 0, checked.stderr
    done = lorefine("refine", "lorefine.yaml", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, request.param[0] == "recon_ctf"


def test_check_refuses_the_refine3d_star_outside_the_project_directory(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    make_project(root, "recon_noctf", "3.1")
    elsewhere = lorefine("check", str(root / "lorefine.yaml"), cwd=tmp_path)
    assert elsewhere.returncode == 2
    assert "particle stack not found in the project directory" in elsewhere.stderr and STACK in elsewhere.stderr
    cfg = yaml.safe_load((root / "lorefine.yaml").read_text())
    cfg["project_dir"] = "."  # the config's folder, resolved as every path of the config
    (root / "lorefine.yaml").write_text(yaml.safe_dump(cfg))
    assert lorefine("check", str(root / "lorefine.yaml"), cwd=tmp_path).returncode == 0


def test_output_stars_name_images_from_the_project_directory(project):
    root, has_ctf = project
    out = root / "LoRefine/job030"
    for module in ("large", "small"):
        for name in ("particles.star", "subtracted.star"):
            text = (out / module / name).read_text()
            table = read_star(out / module / name, project_dir=root)
            first = table.image_name[0].split("@")[1]
            assert (root / first).exists() and not Path(first).is_absolute(), first
            assert "_rlnImageSize" in text and table.optics[1].image_size_px == (48 if name == "particles.star" else 32)
            assert table.optics[1].pixel_size_angstrom == pytest.approx(4.0) and table.has_ctf
    assert read_star(out / "large" / "particles.star", project_dir=root).image_name[0] == f"000001@{STACK}"


def test_subtracted_particles_reconstruct_the_module(project):
    """lorefine reconstruct of each module's subtracted, recentred, re-boxed stack gives the module map recentred."""
    root, has_ctf = project
    out = root / "LoRefine/job030"
    for module in ("large", "small"):
        done = lorefine("reconstruct", "--particles", f"LoRefine/job030/{module}/subtracted.star", "--out", str(out / f"{module}_sub.mrc"),
                        *([] if has_ctf else ["--no-ctf"]), cwd=root)
        assert done.returncode == 0, done.stderr
        rebuilt, reference, mask = (read_map(p)[0] for p in (out / f"{module}_sub.mrc", out / module / "subtracted_map.mrc",
                                                              out / module / "subtracted_mask.mrc"))
        agreement = shells_fsc(rebuilt * mask, reference)
        # the other module is gone: its region (its mask, moved and cut as this module's) holds little density
        # (0.05-0.08 of this module's; 0.90 for `large` and 1.07 for `small` with CTF when k is set to 0, nothing subtracted)
        other = "small" if module == "large" else "large"
        centre = volumes.centre_of_mass_px(read_map(out / module / "map.mrc")[0])
        other_mask = crop_volume(volumes.recentre(read_map(out / other / "mask.mrc")[0], centre), 32) * (1 - mask)
        left = np.sqrt((rebuilt**2 * other_mask).sum() / other_mask.sum() / ((rebuilt**2 * mask).sum() / mask.sum()))
        print(f"{module} ({'CTF' if has_ctf else 'no CTF'}): FSC(subtracted stack rebuilt, module map) min {agreement.min():.4f} "
              f"to 0.8 Nyquist; rms density in the other module's region / in this one {left:.3f}")
        assert agreement.min() >= 0.9 and left < 0.2


@relion
def test_relion_reconstruct_from_the_project_root_agrees_with_lorefine(project, tmp_path):
    root, has_ctf = project
    out = root / "LoRefine/job030"
    for module in ("large", "small"):
        for star, ours, mask in (("particles.star", "map.mrc", "mask.mrc"), ("subtracted.star", "subtracted_map.mrc", "subtracted_mask.mrc")):
            target = tmp_path / f"{module}_{star}.mrc"
            done = subprocess.run(["relion_reconstruct", "--i", f"LoRefine/job030/{module}/{star}", "--o", str(target),
                                   *(["--ctf"] if has_ctf else [])], capture_output=True, text=True, cwd=root, timeout=600)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            theirs, m = read_map(target)[0], read_map(out / module / mask)[0]
            assert np.abs(theirs).max() > 0
            agreement = shells_fsc(theirs * m, read_map(out / module / ours)[0])
            print(f"{module}/{star} ({'CTF' if has_ctf else 'no CTF'}): FSC(relion_reconstruct, lorefine) min {agreement.min():.4f} "
                  "to 0.8 Nyquist")
            assert agreement.min() >= 0.9
