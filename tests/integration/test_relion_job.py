"""A lorefine output folder is a RELION job that RELION continues from (RELION 3.1.3's own programs read what lorefine
wrote; those tests are skipped, with the reason, where RELION is not installed):

- the job's record: note.txt with the command, RELION_JOB_EXIT_SUCCESS after a run that ended well,
  RELION_JOB_EXIT_FAILURE after one that ended with an error, none after a run stopped by a signal (resumable; the
  markers of an earlier attempt go when a run starts again);
- bodies.star: `relion_refine_mpi --continue … --multibody_masks OUT/bodies.star` starts a multi-body refinement
  (from a RELION local refinement of the same particles, tests/data/relion_local_refine: its first iteration, made by
  relion_refine_mpi 3.1.3 with the command in its optimiser.star);
- MODULE/postprocess.star: relion_ctf_refine takes it as its post-processing job (--f) and refines the same defoci as
  with relion_postprocess's own postprocess.star of the same half maps and mask;
- the subtracted particles' mask lies in [0, 1].
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from runs import DATA, LOREFINE, make_run, messages, rewrite_map, run, units_done

from lorefine_mpi.io import mrc, relion_job, results
from lorefine_mpi.io.star import parse_star, read_star

relion = pytest.mark.skipif(shutil.which("relion_refine_mpi") is None or not Path("/usr/bin/mpirun").exists(),
                            reason="RELION (relion_refine_mpi with its Open MPI mpirun) is not installed")
RELION_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}


def markers(out: Path) -> list[str]:
    return sorted(name for name in relion_job.MARKERS if (out / name).exists())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run on RELION's CTF set (two modules, post-processing, the small module's subtracted particles)."""
    folder = tmp_path_factory.mktemp("job")
    config = make_run(folder, n_particles=120, source="recon_ctf", score={"mode": "subtract", "ctf": True},
                      postprocess={"enabled": True, "local_resolution": False}, subtracted={"modules": ["small"], "box_px": 32})
    done = run("refine", config, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_a_finished_run_is_a_successful_relion_job(finished):
    out = finished / "out"
    assert markers(out) == [relion_job.SUCCESS] and (out / relion_job.SUCCESS).read_bytes() == b""
    note = (out / relion_job.NOTE).read_text()
    assert note.count(" ++++ Executing new job on ") == 1
    assert " ++++ with the following command(s): \n" in note and f" refine {finished / 'config.yaml'}\n" in note


def test_bodies_star_holds_the_masks_and_the_learned_sigmas(finished):
    out = finished / "out"
    columns, rows = parse_star(out / "bodies.star")[""]
    assert columns == ["rlnBodyMaskName", "rlnBodyRotateRelativeTo", "rlnBodySigmaAngles", "rlnBodySigmaOffsetAngst"]
    voxel = mrc.voxel_size_angstrom(out / "large" / "mask.mrc")
    for k, (name, row) in enumerate(zip(("large", "small"), rows)):
        assert row[0] == f"out/{name}/mask.mrc" and (finished / row[0]).exists()  # relative to the project directory
        assert int(row[1]) == 2 - k  # two bodies: each rotates relative to the other
        rot, px = results.stage_prior_sigma(out / "results.h5", f"iteration_01/{name}")
        assert float(row[2]) == pytest.approx(np.rad2deg(rot), abs=1e-6) and float(row[3]) == pytest.approx(px * voxel, abs=1e-6)


def test_the_subtracted_mask_lies_in_the_unit_range(finished):
    mask, _ = mrc.read_map(finished / "out" / "small" / "subtracted_mask.mrc")
    assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask.max() > 0.99


@relion
def test_relion_multibody_refinement_starts_from_bodies_star(finished, tmp_path):
    """relion_refine_mpi continues RELION's local refinement of these particles with lorefine's bodies.star: it reads the
    bodies, makes their masks and starts its first expectation (then the test ends it)."""
    shutil.copytree(DATA / "relion_local_refine", tmp_path / "local")
    shutil.copy(DATA / "recon_ctf.mrcs", tmp_path / "recon_ctf.mrcs")
    shutil.copytree(finished / "out", tmp_path / "out", ignore=shutil.ignore_patterns("*.h5", "*.html", "motion", "consensus"))
    (tmp_path / "mb").mkdir()
    command = ["/usr/bin/mpirun", "--oversubscribe", "-np", "3", "relion_refine_mpi", "--continue", "local/run_it001_optimiser.star",
               "--o", "mb/run", "--multibody_masks", "out/bodies.star", "--solvent_correct_fsc", "--oversampling", "1", "--healpix_order", "4",
               "--auto_local_healpix_order", "4", "--offset_range", "0.5", "--offset_step", "0.25", "--dont_combine_weights_via_disc",
               "--pool", "30", "--j", "1"]
    log = tmp_path / "mb.log"
    with open(log, "w") as sink:
        job = subprocess.Popen(command, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, env=RELION_ENV, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and job.poll() is None and "Expectation iteration" not in log.read_text():
            time.sleep(0.5)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)
    text = log.read_text()
    assert "Initialising multi-body refinement" in text and "Expectation iteration" in text, text[-3000:]
    assert (tmp_path / "mb" / "run_body001_mask.mrc").exists() and (tmp_path / "mb" / "run_body002_mask.mrc").exists()


def with_micrographs(source: Path, target: Path) -> None:
    """The particles STAR file with an rlnMicrographName column (three micrographs), which relion_ctf_refine groups by."""
    lines, out, block, columns = source.read_text().splitlines(), [], None, 0
    for line in lines:
        text = line.strip()
        if text.startswith("data_"):
            block = text
        if block == "data_particles" and text.startswith("_rln"):
            columns += 1
            out.append(line)
            continue
        if block == "data_particles" and columns and not text.startswith("_rln") and text and text[0] not in "#l":
            if not any(o.startswith("_rlnMicrographName") for o in out):
                out.append(f"_rlnMicrographName #{columns + 1}")
            out.append(f"{line.rstrip()} mic{len(out) % 3:03d}.mrc")
            continue
        out.append(line)
    target.write_text("\n".join(out) + "\n")


def relion_star(path: Path, block: str) -> dict:
    columns, rows = parse_star(path)[block]
    return {c: [r[i] for r in rows] for i, c in enumerate(columns)}


@relion
def test_relion_ctf_refine_takes_postprocess_star_as_relion_postprocess_own(finished, tmp_path):
    """The module's half maps and mask through relion_postprocess (its own postprocess.star), then relion_ctf_refine with
    that file and with lorefine's: the same refined defoci (to the noise of the phase randomisation, which each program
    draws for itself); without data_fsc it refuses the file (it reads it)."""
    out = finished / "out" / "large"
    with_micrographs(finished / "particles.star", tmp_path / "particles.star")
    for name in ("half1.mrc", "half2.mrc", "mask.mrc"):
        shutil.copy(out / name, tmp_path / name)
    shutil.copy(finished / "recon_ctf.mrcs", tmp_path / "recon_ctf.mrcs")
    shutil.copy(out / "postprocess.star", tmp_path / "lorefine_postprocess.star")
    ours = relion_star(tmp_path / "lorefine_postprocess.star", "general")
    (tmp_path / "relion").mkdir()
    subprocess.run(["relion_postprocess", "--i", "half1.mrc", "--i2", "half2.mrc", "--mask", "mask.mrc", "--angpix", "4", "--auto_bfac",
                    "--o", "relion/postprocess"], cwd=tmp_path, capture_output=True, timeout=300)  # exits 1 without ghostscript, after its STAR
    theirs = relion_star(tmp_path / "relion" / "postprocess.star", "general")
    assert float(ours["rlnFinalResolution"][0]) == pytest.approx(float(theirs["rlnFinalResolution"][0]), abs=1e-3)
    fsc_ours = relion_star(tmp_path / "lorefine_postprocess.star", "fsc")
    fsc_theirs = relion_star(tmp_path / "relion" / "postprocess.star", "fsc")
    np.testing.assert_allclose(np.array(fsc_ours["rlnFourierShellCorrelationMaskedMaps"], float),
                               np.array(fsc_theirs["rlnFourierShellCorrelationMaskedMaps"], float), atol=1e-5)

    def ctf_refine(postprocess_star, folder):
        done = subprocess.run(["relion_ctf_refine", "--i", "particles.star", "--f", postprocess_star, "--o", f"{folder}/", "--m1", "half1.mrc",
                               "--m2", "half2.mrc", "--mask", "mask.mrc", "--fit_defocus", "--fit_mode", "fpmff", "--j", "1"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=RELION_ENV)
        star = tmp_path / folder / "particles_ctf_refine.star"
        return done, (read_star(star, tmp_path).defocus_u_angstrom if star.exists() else None)

    _, with_relions = ctf_refine("relion/postprocess.star", "ctf_relion")
    _, with_ours = ctf_refine("lorefine_postprocess.star", "ctf_lorefine")
    assert with_relions is not None and with_ours is not None
    # the same defoci to 0.02 %: the corrected FSC beyond the phase randomisation is one random draw in each program
    np.testing.assert_allclose(with_ours, with_relions, rtol=2e-4)
    text = (tmp_path / "lorefine_postprocess.star").read_text()
    (tmp_path / "no_fsc.star").write_text(text[:text.index("data_fsc")])
    refused, _ = ctf_refine("no_fsc.star", "ctf_no_fsc")
    assert refused.returncode != 0


def test_a_run_that_fails_is_a_failed_relion_job(tmp_path):
    """An image with NaN values that check's sample misses stops refine (one line, status 2): RELION_JOB_EXIT_FAILURE."""
    config = make_run(tmp_path, n_particles=130, source="recon_noctf")
    sample = set(np.random.default_rng(0).choice(130, size=100, replace=False).tolist())  # check's sample (as test_hostile)
    bad = max(set(range(130)) - sample)
    rewrite_map(tmp_path / "recon_noctf.mrcs", lambda d: np.where(np.arange(d.size).reshape(d.shape) // (48 * 48) == bad, np.nan, d))
    done = run("refine", config)
    assert done.returncode == 2 and "holds NaN or Inf values" in done.stderr
    assert markers(tmp_path / "out") == [relion_job.FAILURE]


def test_a_refused_run_writes_no_marker_into_a_folder_it_does_not_hold(tmp_path):
    config = make_run(tmp_path, n_particles=24)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "combined.mrc").write_text("another program's file")
    done = run("refine", config)
    assert done.returncode == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["combined.mrc"]


def test_a_stopped_run_has_no_marker_until_it_is_resumed(tmp_path):
    """Ctrl-C (status 3, resumable): no marker, as a RELION job killed by a signal; the resumed run appends to note.txt
    and ends with RELION_JOB_EXIT_SUCCESS."""
    config = make_run(tmp_path, n_particles=60, source="recon_noctf")
    job = subprocess.Popen(LOREFINE + ["refine", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while units_done(tmp_path / "out") < 1 and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 3, err[-2000:]
    assert markers(tmp_path / "out") == [] and (tmp_path / "out" / relion_job.NOTE).read_text().count("Executing new job") == 1
    resumed = run("refine", config, "--continue")
    assert resumed.returncode == 0, messages(resumed.stderr)
    assert markers(tmp_path / "out") == [relion_job.SUCCESS]
    note = (tmp_path / "out" / relion_job.NOTE).read_text()
    assert note.count("Executing new job") == 2 and note.rstrip().splitlines()[-2].endswith("--continue")
