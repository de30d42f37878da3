"""What the score cube says about a module's angle: posterior-mean estimates from a finished run, against the truth.

    python benchmarks/posterior_study.py DATASET_DIR RUN_DIR --iteration 2 --module 1
                                         [--betas 1,0.7,0.5,0.35] [--gammas 0] [--sigmas-deg 1] [--upsampling 1.75]
                                         [--true-reference] [--true-rest-poses]

DATASET_DIR is a simulated set (`benchmarks/accuracy.py`'s: particles.star, gt_module_k.star); RUN_DIR a finished
`lorefine refine` of it with at least ``--iteration`` iterations (accuracy.py's WORK/run). The stage (iteration,
module k, 1-based) is set up as the run set it up (its reference, band, rest), then every particle is scored
over its whole candidate set (every rotation × every shift) with a flat prior, as the learned prior's pilot does.
From those cubes, for each likelihood scale β (the log-likelihood multiplied by β), prior shape γ and width σ:

    prior on the rotation vector ω away from the consensus:  p(ω) ∝ |ω|^−γ · exp(−|ω|² / 2σ²)
    (γ = 0: the Gaussian lorefine uses; γ → 2: a normally distributed angle about a random axis, the paper's motion;
    |ω| is floored at the grid's smallest non-zero distance), and the shift prior of σ 1 px about the consensus,

the log marginal likelihood over the particles (comparable between γ and σ at one β), and the posterior mean
rotation's RMS and median angular error against the true module poses. An experiment outside the program, for the
README's measurements of issue 13 (the estimate of a module's angle); it needs the memory of every cube (≈ 1 GB
for flex_dev) and takes a few minutes.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from lorefine_mpi.config.schema import load_config
from lorefine_mpi.geometry import rotations
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star
from lorefine_mpi.refine import engine as eng
from lorefine_mpi.refine import layout
from lorefine_mpi.refine.run import replay_stage
from lorefine_mpi.search import local, score


def stage_search(run: Path, iteration: int, k: int, truth_map=None, rest_poses=None):
    """The StageSearch of (iteration, module k, 0-based) as the run set it up, and the engine. truth_map: a map
    (the simulation's true complex at the consensus pose) to use instead of the run's maps, for the module's
    reference and the rest alike; the band stays the run's. rest_poses: {module index: Poses} to put the other
    modules at instead of the run's (the true module poses)."""
    cfg = load_config(run / layout.CONFIG)
    e = eng.RefineEngine(cfg)
    state = replay_stage(cfg, e, iteration, k, folder=run)
    model, maps, now = state.model, state.module_maps, state.poses
    if truth_map is not None:
        model, maps = truth_map, [truth_map] * len(cfg.modules)
    for j, given in (rest_poses or {}).items():
        now[j] = given
    state = e.begin_stage(state.stage, model, maps, now)
    band_px, weights, _ = e.search_band(state, e.reference_halves(state))
    print(f"iteration {iteration}, module {state.stage.module_name}: band {band_px:.1f} px", flush=True)
    return e.stage_search(state, band_px, weights), e


def flat_cubes(ss, e):
    """Every particle's flat-prior scores (`local.ParticleScores`), the effective pixels, ψ step, and the shift prior's centres."""
    s0 = ss.searcher
    flat = dataclasses.replace(s0.settings, strategy="simultaneous", prior_sigma_rad=None, prior_sigma_px=None,
                               angle_refinement="none", estimate="map")
    search = local.UnitSearch(s0.fvol, s0.directions, flat, s0.box, s0.cache)
    units = e.work_units(ss.state.prelim)
    cubes = [None] * e.n
    for u in range(units.max() + 1):
        ids = np.flatnonzero(units == u)
        for j, scores in zip(ids, search.run(ss._unit(ids)).scores):
            cubes[j] = scores
    everyone = ss._unit(np.arange(e.n))
    return cubes, search.work.effective_pixels, flat.psi_step_rad, everyone.prior_origin_px - everyone.origin_px


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("--iteration", type=int, default=2)
    p.add_argument("--module", type=int, default=1, help="1-based")
    p.add_argument("--betas", default="1,0.7,0.5,0.35")
    p.add_argument("--gammas", default="0")
    p.add_argument("--sigmas-deg", default="1")
    p.add_argument("--upsampling", type=float, default=local.UPSAMPLING,
                   help="fine pixels per working pixel the patches are resampled from (the program's: %(default)s)")
    p.add_argument("--true-reference", action="store_true",
                   help="search against the simulation's true complex (DATASET_DIR/gt_whole.mrc) instead of the run's maps")
    p.add_argument("--likelihood", choices=("profile", "linear", "particle"), default="profile",
                   help="profile: the program's −(J/2)·log(1 − ρ²), the amplitude and noise fitted per candidate; linear: "
                        "J·ρ_s·ρ / (1 − ρ_s²), one amplitude and noise level for all (ρ_s, the signal's correlation, "
                        "estimated over the particles); particle: the same with each particle's own ρ at the prior's centre")
    p.add_argument("--true-rest-poses", action="store_true",
                   help="the other modules at their true poses (DATASET_DIR/gt_module_j.star) instead of the run's")
    args = p.parse_args(argv)
    local.UPSAMPLING = args.upsampling
    numbers = lambda text: [float(v) for v in text.split(",")]
    betas, gammas, sigmas = numbers(args.betas), numbers(args.gammas), np.deg2rad(numbers(args.sigmas_deg))
    k = args.module - 1
    truth_map = mrc.read_map(args.data / "gt_whole.mrc")[0] if args.true_reference else None
    rest_poses = None
    if args.true_rest_poses:
        n_modules = len(load_config(args.run / layout.CONFIG).modules)
        rest_poses = {j: eng.Poses(t.matrices, t.origin_px.copy()) for j in range(n_modules) if j != k
                      for t in [read_star(args.data / f"gt_module_{j + 1}.star")]}
    ss, e = stage_search(args.run, args.iteration, k, truth_map, rest_poses)
    cubes, pixels, psi_step, prior_offset = flat_cubes(ss, e)
    consensus = read_star(args.data / "particles.star").matrices
    truth = rotations.rotation_vector(np.swapaxes(consensus, -1, -2) @ read_star(args.data / f"gt_module_{k + 1}.star").matrices)
    error0 = np.linalg.norm(truth, axis=1)
    print(f"consensus: rms {np.rad2deg(np.sqrt(np.mean(error0**2))):.3f}°, median {np.rad2deg(np.median(error0)):.3f}°")
    # per particle: ω of every (angle, direction), and per β the cube summed over the shifts with their prior
    omega, reduced = [], {b: [] for b in betas}
    for i, s in enumerate(cubes):
        poses = local.candidate_pose(s.frames[None], s.ms[:, None], psi_step)
        omega.append(np.where(s.valid[..., None], rotations.rotation_vector(np.swapaxes(consensus[i], -1, -2) @ poses), 0.0))
    distance = [np.linalg.norm(w, axis=-1) for w in omega]
    centre = []
    if args.likelihood in ("linear", "particle"):
        # the signal's correlation ρ_s: the mean over the particles of ρ at the candidate nearest the prior's centre
        # (the noise's part of ρ has mean 0 there); "particle": each particle's own ρ there
        for i, s in enumerate(cubes):
            d = np.where(s.valid, distance[i], np.inf)
            t, kk = np.unravel_index(np.argmin(d), d.shape)
            centre.append(s.rho[t, kk, np.argmin(np.sum((s.shifts_px - prior_offset[i]) ** 2, axis=-1))])
        rho_signal = max(float(np.mean(centre)), 0.0)
        print(f"{args.likelihood} likelihood: mean signal correlation {rho_signal:.4f} (noise sd of rho {1 / np.sqrt(pixels):.4f})")
    for i, s in enumerate(cubes):
        finite = s.valid[:, :, None] & np.isfinite(s.rho)
        shift_prior = -np.sum((s.shifts_px - prior_offset[i]) ** 2, axis=-1) / 2.0
        rho = np.where(finite, s.rho, 0.0)
        for b in betas:
            if args.likelihood != "profile":  # the program's fixed_amplitude, with ρ_s shared ("linear") or the particle's own
                rs = rho_signal if args.likelihood == "linear" else float(np.clip(centre[i], 0.0, 0.99))
                ll = score.FixedAmplitudeLikelihood(pixels * b, rs)(rho)
            else:
                ll = score.ProfileLikelihood(pixels * b)(rho)
            reduced[b].append(logsumexp(np.where(finite, ll + shift_prior, -np.inf), axis=2))
    floor = min(d[(d > 1e-6) & c.valid].min() for d, c in zip(distance, cubes))
    for b in betas:
        for gamma in gammas:
            for sigma in sigmas:
                evidence, mean = 0.0, np.empty((len(cubes), 3))
                for i, c in enumerate(cubes):
                    log_prior = np.where(c.valid, -distance[i] ** 2 / (2 * sigma**2) - gamma * np.log(np.maximum(distance[i], floor)), -np.inf)
                    log_post = reduced[b][i] + log_prior
                    total = logsumexp(log_post)
                    evidence += total - logsumexp(log_prior)
                    mean[i] = np.sum(np.exp(log_post - total)[..., None] * omega[i], axis=(0, 1))
                error = np.linalg.norm(mean - truth, axis=1)
                print(f"beta {b:.2f} gamma {gamma:.1f} sigma {np.rad2deg(sigma):.2f}°: log evidence {evidence:11.1f}, "
                      f"posterior mean rms {np.rad2deg(np.sqrt(np.mean(error**2))):.3f}°, median {np.rad2deg(np.median(error)):.3f}°", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
