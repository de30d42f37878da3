"""What `lorefine refine` does after its last iteration: what each module gained, and how the modules move.

``finish_run`` (called once by `refine.run.refine`, at the end of the run, on every rank):
    1. consensus half maps: read from ``consensus/half1.mrc`` and ``half2.mrc`` when the refinement made them
       (for its search band); otherwise every rank back-projects its block of particles of its half with the consensus
       poses, the accumulators are summed and reconstructed as a refinement stage does (`distributed_half_maps`), and
       rank 0 writes them. The
       "before" of every module is the masked, phase-randomisation-corrected FSC of these in the module's
       mask (``MODULE/fsc_consensus.json``);
    2. per module, rank 0 post-processes the module's half maps in its mask (`validation.postprocess`,
       the mask always used): ``MODULE/postprocess*.{mrc,json,png}`` and ``fsc_before_after.png``;
    3. per module, local resolution of its half maps (`validation.locres`, window centres split over the
       ranks, near the module's mask): ``MODULE/locres.mrc``, ``locres.json``, histogram and slices;
    4. rank 0: the modules' motion (`validation.motion`) into ``results.h5`` (/motion), ``motion/motion.csv``,
       ``motion/motion.json``, plots, and maps of the complex moved along the first principal components
       (``motion/pcN_frameM.mrc``, −2σ … +2σ, a volume series for a movie);
    5. rank 0: ``summary.json``, ``timings.json``, the report (``write_report``, given by the caller: `report.html`
       renders a run folder and sits above this package), and a table on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from lorefine_mpi.geometry.volumes import centre_of_mass_px
from lorefine_mpi.io import mrc, relion_job, results
from lorefine_mpi.io.results import write_motion
from lorefine_mpi.io.star import atomic_write_text
from lorefine_mpi.process_memory import release_freed_memory
from lorefine_mpi.reconstruction.backproject import BackProjector
from lorefine_mpi.reconstruction.reconstruct import backproject_into, distributed_half_maps, with_full
from lorefine_mpi.refine import layout
from lorefine_mpi.validation import fsc as fsc_mod
from lorefine_mpi.validation import locres as locres_mod
from lorefine_mpi.validation import motion as motion_mod
from lorefine_mpi.validation import postprocess as pp

log = logging.getLogger(__name__)


def consensus_half_maps(ctx, source, matrices, origin_px, *, subset, reconstruction):
    """Half maps of the whole complex from the consensus poses (every rank back-projects a block; rank 0
    gets {'half1', 'half2', 'full'}, the others None)."""
    share = ctx.half_share(len(source))

    def backproject(half, accumulator):
        backproject_into(accumulator, source, share[subset[share] == half], matrices=matrices, origin_px=origin_px)

    maps = distributed_half_maps(ctx, lambda: BackProjector(source.box, reconstruction.padding), backproject, reconstruction.weight_floor,
                                 reconstruction.gridding_iterations, stoppable=False)
    return None if maps is None else with_full(*maps)


def consensus_halves_made(folder: layout.RunFolder) -> bool:
    """Whether the run wrote ``OUT/consensus/half1.mrc`` and ``half2.mrc`` (results.h5 root flag
    ``consensus_halves``, set by the refinement when it reconstructs them for the search band)."""
    flagged = results.has_root_flag(folder.results, "consensus_halves")
    return flagged and all(folder.consensus_half(h).exists() for h in (1, 2))


def plot_before_after_png(path, before: fsc_mod.FSCResult, after: fsc_mod.FSCResult, name: str) -> None:
    fsc_mod.plot_fsc_png(path, {"consensus (before)": before, "refined (after)": after},
                         f"{name}: gold-standard FSC in the module's mask (corrected)")


def finish_run(cfg, ctx, *, folder: layout.RunFolder, source, consensus_poses, poses, centres_px, masks, voxel_size_angstrom: float,
               subset, started: float, write_report) -> None:
    """Steps 1–5 of the module docstring. cfg: the run's Config; consensus_poses, poses[k]: objects with
    ``matrices`` (n, 3, 3) and ``origin_px`` (n, 2) (consensus, and module k's final poses); centres_px (K, 3): each
    module's rotation centre in its last stage (xyz px from the box centre: its ``centre_px``, else the centre of mass of
    the model in its mask), about which the motion analysis measures its rotation; masks: K (N, N, N) soft masks; subset:
    (n,) rlnRandomSubset; started: the run's start (time.time()); folder: the run folder as the loop left it on every rank,
    its last iteration known (not read back from results.h5, which rank 0 alone writes: another rank could read it
    before the record of ``iterations: auto``'s last iteration is there)."""
    release_freed_memory()  # what the refinement freed (process_memory)
    names = [m.name for m in cfg.modules]
    post = cfg.postprocess
    timings = {"refinement_s": round(time.time() - started, 2)}
    clock = time.time()
    if ctx.bcast(ctx.is_root and consensus_halves_made(folder)):  # the run made them (search.max_resolution_angstrom: auto)
        maps = {f"half{h}": mrc.read_map(folder.consensus_half(h))[0] for h in (1, 2)} if ctx.is_root else None
    else:
        maps = consensus_half_maps(ctx, source, consensus_poses.matrices, consensus_poses.origin_px,
                                   subset=subset, reconstruction=cfg.reconstruction)
        if ctx.is_root:
            folder.consensus_folder.mkdir(exist_ok=True)
            for h in (1, 2):
                mrc.write_map(folder.consensus_half(h), maps[f"half{h}"], voxel_size_angstrom)
    summary = {"modules": {}, "voxel_size_angstrom": voxel_size_angstrom,  # rank 0's: it alone reads results.h5 here
               "dataset": dataset_facts(cfg, folder, source, voxel_size_angstrom) if ctx.is_root else None}
    sharpened = {}
    if ctx.is_root:
        timings["consensus_half_maps_s"] = round(time.time() - clock, 2)
        clock = time.time()
        for name, mask in zip(names, masks):
            module = folder.module_folder(name)
            h1, _ = mrc.read_map(module.half(1))
            h2, _ = mrc.read_map(module.half(2))
            before = fsc_mod.fsc(maps["half1"], maps["half2"], voxel_size_angstrom, mask=mask, seed=cfg.seed)
            fsc_mod.write_fsc_json(module / "fsc_consensus.json", {"consensus_half_maps_masked": before})
            result = pp.postprocess(h1, h2, mask, voxel_size_angstrom, bfactor=post.bfactor, force_mask=True, seed=cfg.seed)
            pp.write_outputs(module.path, result, f"{name}: resolution {result.resolution_angstrom:.2f} Å")
            pp.write_relion_star(module.postprocess_star, result, half1=relion_path(module.half(1), cfg), half2=relion_path(module.half(2), cfg),
                                 mask=relion_path(module.mask, cfg), command=f"the module {name} of lorefine refine {cfg.source}")
            plot_before_after_png(module / "fsc_before_after.png", before, result.fsc, name)
            sharpened[name] = result.sharpened  # the local resolution's plots draw on it; the rest of the result is written
            summary["modules"][name] = {
                "resolution_before_angstrom": fsc_mod.resolution_shell_at(before, 0.143)[1],
                "resolution_after_angstrom": result.resolution_angstrom,
                "resolution_before_interpolated_angstrom": fsc_mod.resolution_at(before, 0.143),
                "resolution_after_interpolated_angstrom": result.resolution_interpolated_angstrom,
                "bfactor_angstrom2": result.bfactor_angstrom2, "bfactor_source": result.bfactor_source, "warnings": result.warnings,
            }
            for warning in result.warnings:
                log.warning("%s: post-processing: %s", name, warning)
            log.info("%s: masked FSC 0.143 %.2f Å (consensus) -> %.2f Å (refined), B-factor %s", name,
                     summary["modules"][name]["resolution_before_angstrom"], result.resolution_angstrom, bfactor_text(summary["modules"][name]))
            del h1, h2, result, before
            release_freed_memory()  # each module's post-processing is a phase of its own (process_memory)
        timings["postprocess_s"] = round(time.time() - clock, 2)
    del maps
    clock = time.time()
    if post.local_resolution:
        settings = locres_mod.LocresSettings(post.locres_radius_angstrom, post.locres_edge_angstrom, post.locres_step_angstrom)
        for name, mask in zip(names, masks):
            # The module's half maps were written by rank 0 before the last stage's broadcast: every rank reads them.
            module = folder.module_folder(name)
            h1, _ = mrc.read_map(module.half(1))
            h2, _ = mrc.read_map(module.half(2))
            local = locres_mod.local_resolution(ctx, h1, h2, voxel_size_angstrom, settings, support=mask, seed=cfg.seed)
            if ctx.is_root:
                locres_mod.write_outputs(module.path, local, sharpened[name], voxel_size_angstrom, mask, f"{name}: local resolution")
                stats = locres_mod.summary(local, mask)
                summary["modules"][name]["locres_median_angstrom"] = stats.get("median_angstrom")
                log.info("%s: local resolution in the mask, median %s Å (%d windows)", name,
                         f"{stats['median_angstrom']:.2f}" if "median_angstrom" in stats else "-", len(local.centres_px))
            del local
            release_freed_memory()
        timings["local_resolution_s"] = round(time.time() - clock, 2)
    if ctx.is_root:
        clock = time.time()
        analysis = motion_mod.analyse(names, np.asarray(centres_px, dtype=np.float64), consensus_poses.matrices, consensus_poses.origin_px,
                                      [(p.matrices, p.origin_px) for p in poses], voxel_size_angstrom)
        write_motion_outputs(folder, analysis, source.table.image_name, masks, voxel_size_angstrom, post.motion_components)
        motion_summary = motion_mod.summary(analysis)
        for name in names:
            summary["modules"][name] |= {"median_pose_change_deg": motion_summary["modules"][name]["median_angle_deg"],
                                         "median_pose_change_angstrom": motion_summary["modules"][name]["median_shift_angstrom"]}
        timings["motion_s"] = round(time.time() - clock, 2)
        if len(names) > 1:
            write_bodies(cfg, folder, masks, voxel_size_angstrom)
        timings["finish_total_s"] = round(sum(v for k, v in timings.items() if k != "refinement_s"), 2)
        atomic_write_text(folder.timings, json.dumps(timings, indent=1))
        atomic_write_text(folder.summary, json.dumps(summary, indent=1))
        report = write_report(folder.out) if write_report is not None else "(not written)"
        print(results_table(summary, report), flush=True)


def dataset_facts(cfg, folder: layout.RunFolder, source, voxel_size_angstrom: float) -> dict:
    """What the run ran on, for the report's header: particles, box, pixel size, optics groups, whether the CTF was used,
    the iterations it made and why it stopped (as configured, or ``iterations: auto``'s reason in results.h5)."""
    table = source.table
    if isinstance(cfg.iterations, int):
        because = f"as configured (iterations: {cfg.iterations})"
    else:
        because = results.iterations_stopped_because(folder.results) or "iterations: auto"
    return {"particles": len(table), "box_px": int(source.box), "pixel_size_angstrom": float(voxel_size_angstrom),
            "optics_groups": len(table.optics), "ctf": bool(source.use_ctf), "ctf_in_star": bool(table.has_ctf),
            "iterations": int(folder.iterations), "stopped_because": because}


def relion_path(path, cfg) -> str:
    """A path as RELION reads it: relative to the project directory (RELION's working directory)."""
    return os.path.relpath(path, cfg.project_dir)


def write_bodies(cfg, folder: layout.RunFolder, masks, voxel_size_angstrom: float) -> None:
    """``OUT/bodies.star``: the modules as RELION multi-body bodies, to continue with ``relion_refine --multibody_masks``
    or ``relion_flex_analyse``. Per module: its mask (``OUT/MODULE/mask.mrc``); the σ of its rotation and shift that
    lorefine learned in the last iteration (results.h5 ``prior_sigma``), or, where its prior was flat, a third of its
    search window (RELION searches ±3σ); the body it rotates relative to: the config's ``rotate_relative_to`` (a bodies
    file given as ``modules:``), else the module whose mask's centre of mass is nearest."""
    centres = np.array([centre_of_mass_px(mask) for mask in masks])
    names = [m.name for m in cfg.modules]
    bodies = []
    for k, module in enumerate(cfg.modules):
        search = module.search(cfg.search)
        learned = results.stage_prior_sigma(folder.results, results.stage_name(folder.iterations, module.name)) or (None, None)
        sigma_deg = np.rad2deg(learned[0]) if learned[0] is not None else search.cone_half_angle_deg / 3.0
        sigma_px = learned[1] if learned[1] is not None else search.max_shift_px / 3.0
        if module.rotate_relative_to is not None:
            other = names.index(module.rotate_relative_to)
        else:
            distance = np.linalg.norm(centres - centres[k], axis=1)
            distance[k] = np.inf
            other = int(np.argmin(distance))
        bodies.append({"mask": relion_path(folder.module_folder(module.name).mask, cfg), "rotate_relative_to": other + 1,
                       "sigma_angles_deg": sigma_deg, "sigma_offset_angstrom": sigma_px * voxel_size_angstrom})
    relion_job.write_bodies_star(folder.bodies, bodies)
    log.info("bodies for RELION multi-body refinement: %s (%s)", folder.bodies, "; ".join(
        f"{n}: σ {b['sigma_angles_deg']:.2f}°, {b['sigma_offset_angstrom']:.2f} Å, relative to body {b['rotate_relative_to']}" for n, b in zip(names, bodies)))


def write_motion_outputs(run: layout.RunFolder, analysis, image_names, masks, voxel_size_angstrom: float, components: int) -> None:
    """results.h5 /motion, motion/motion.csv and motion.json, the plots, and the maps along the components."""
    folder = run.motion_folder
    folder.mkdir(exist_ok=True)
    if run.results.exists():
        write_motion(run.results, analysis)
    motion_mod.write_csv(folder / "motion.csv", analysis, image_names)
    atomic_write_text(folder / "motion.json", json.dumps(motion_mod.summary(analysis), indent=1))
    for k, name in enumerate(analysis.module_names):
        motion_mod.plot_pose_change_png(run.module_folder(name) / "pose_change.png", analysis, k, f"{name}: pose change from the consensus")
    if not analysis.pairs:
        return
    motion_mod.plot_relative_png(folder / "relative_motion.png", analysis)
    motion_mod.plot_pca_png(folder / "pca.png", analysis)
    module_maps = [mrc.read_map(run.module_folder(name).map)[0] for name in analysis.module_names]
    combined, _ = mrc.read_map(run.combined())
    rest = combined * (1.0 - np.clip(sum(masks), 0.0, 1.0))
    for c in range(min(components, len(analysis.eigenvalues))):
        for f, frame in enumerate(motion_mod.component_frames(analysis, module_maps, rest, c, voxel_size_angstrom), 1):
            mrc.write_map(folder / f"pc{c + 1}_frame{f}.mrc", frame, voxel_size_angstrom)


def bfactor_text(module_summary: dict) -> str:
    """A module's B-factor as the table shows it: ``-596 Å²``, or ``not estimated`` when the Guinier fit had too few
    shells (`validation.postprocess.MIN_FIT_SHELLS`; none was applied)."""
    if module_summary.get("bfactor_source") == "not estimated":
        return "not estimated"
    return f"{module_summary['bfactor_angstrom2']:.0f} Å²"


def results_table(summary: dict, report_path) -> str:
    """The table `lorefine refine` ends with: per module the masked FSC 0.143 resolution of the consensus
    and of the refined map, the B-factor, and the median pose change; then the report's path."""
    rows = [("module", "resolution (masked FSC 0.143)", "B-factor", "median pose change")]
    for name, m in summary["modules"].items():
        change = m.get("median_pose_change_deg")
        rows.append((name, f"{m['resolution_before_angstrom']:.2f} Å → {m['resolution_after_angstrom']:.2f} Å", bfactor_text(m),
                     f"{change:.2f}°, {m['median_pose_change_angstrom']:.2f} Å" if change is not None else "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"{r[0]:<{widths[0]}}   {r[1]:>{widths[1]}}   {r[2]:>{widths[2]}}   {r[3]:>{widths[3]}}" for r in rows]
    lines.append(f"report: {report_path}")
    return "\n".join(lines)
