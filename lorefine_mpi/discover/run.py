"""`discover`: the rigid modules of a complex and their masks, proposed from the data (issue 31).

    probes      rank 0: the consensus density (in the particle's mask) cut into P compact probes (`discover.probes`),
                one soft mask each, and a sample of the particles; written as a refine config with one module per
                probe (``OUT/probes/probes.yaml``)
    search      every probe LO-refined as a module, once, on the sample, the rest of the complex subtracted at its
                consensus poses, the prior learned as refine learns it (`refine.run._Run.search`: the same work units,
                distributor, checkpoint ``OUT/probe_search/results.h5``, so parallel and resumable as refine is)
    coherence   rank 0: each probe's per-particle motion as the image displacement it implies at common points,
                the probes' pairwise coherence weighted by the posterior spreads, its null from permuted particles
                (`discover.coherence`)
    modules     rank 0: average-linkage clustering of 1 − coherence cut at the null's threshold; groups of two or
                more probes are modules, one when nothing moves coherently; the voxels of a probe placed by its
                position only (coherent with nothing) go to the module of the nearest voxel placed by motion
    outputs     rank 0: ``masks/moduleK.mrc`` (soft masks), ``bodies.star`` (RELION multi-body, two modules or more),
                ``lorefine.yaml`` (refine with these modules), ``discover.json`` and ``report.png``

The probes' stages differ from refine's in one way: every probe's rest is the consensus outside its mask at the
consensus poses (no probe's refined pose enters another's search), so the probes are independent measurements.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import yaml

from lorefine_mpi.config import load_config
from lorefine_mpi.discover import coherence as coh
from lorefine_mpi.discover import probes as prb
from lorefine_mpi.errors import InputError
from lorefine_mpi.io import mrc
from lorefine_mpi.io.results import stage_name, stage_prior_sigma
from lorefine_mpi.io.star import atomic_write_text, read_star, relative_image_names, write_star
from lorefine_mpi.search import options

log = logging.getLogger(__name__)

PROBES_FOLDER = "probes"  # the probes' masks, label map, the particle sample and the probes' refine config
PROBE_SEARCH_FOLDER = "probe_search"  # the probes' searches: a refine run folder (results.h5, the checkpoint)
PROBE_CONFIG = "probes.yaml"
MASKS_FOLDER = "masks"
OUTPUT_FILES = ("discover.json", "lorefine.yaml", "bodies.star", "report.png")


def probe_name(p: int) -> str:
    return f"probe{p + 1:02d}"


def module_name(k: int) -> str:
    return f"module{k + 1}"


def discover(dcfg, dist, *, resume: bool, command_line: str, write_page: bool = True) -> int:
    """`discover` of ``dcfg`` (`discover.config.DiscoverConfig`; module docstring): 0, or `errors.EXIT_STOPPED` when a stop
    was asked (finished probe searches recorded; ``--continue`` resumes). Collective: every process calls it."""
    from lorefine_mpi.refine.recorder import Recorder

    out = Path(dcfg.output)
    error = None
    if dist.is_root:
        try:
            prepare(dcfg, resume)
        except InputError as e:
            error = e
    dist.agree_on_error(error)
    probe_cfg = load_config(out / PROBES_FOLDER / PROBE_CONFIG)
    recorder = Recorder(probe_cfg, dist, command_line=command_line, resume=resume,
                        resume_command=f"lorefine discover {dcfg.source} --continue")
    with recorder.running():
        measured = search_probes(probe_cfg, dist, recorder)
        if measured is False:
            return recorder.stopped()
    if dist.is_root:
        group_and_write(dcfg, probe_cfg, measured, write_page)
    dist.barrier()
    return 0


# -- probes ------------------------------------------------------------------------------------------------------
def prepare(dcfg, resume: bool) -> None:
    """Rank 0: the probes' masks, labels, particle sample and refine config in ``OUT/probes/`` (kept as they are on
    ``--continue``, whose checkpoint was made with them)."""
    out = Path(dcfg.output)
    folder = out / PROBES_FOLDER
    if resume:
        if not (folder / PROBE_CONFIG).is_file():
            raise InputError(f"--continue: no discover run to resume in {out} (expected {folder / PROBE_CONFIG}); start without --continue")
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"output: {out} exists and is not a folder; expected a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"output: {out} is not empty; use a new or empty folder (or --continue to resume a discover run there)")
    cfg, s = dcfg.base, dcfg.settings
    consensus, voxel = mrc.read_map(cfg.consensus_map)
    mask = None
    if dcfg.mask is not None:
        mask, _ = mrc.read_map(dcfg.mask)
        if mask.shape != consensus.shape:
            raise InputError(f"mask: {dcfg.mask} is {mask.shape[0]}³ voxels; expected the consensus map's {consensus.shape[0]}³")
    density = prb.density_weights(consensus, mask)
    n_voxels = int((density > 0).sum())
    resolution = 4.0 * voxel if options.is_auto(s.resolution_angstrom) else float(s.resolution_angstrom)
    count = prb.auto_probe_count(n_voxels, voxel, resolution) if options.is_auto(s.probes) else int(s.probes)
    if n_voxels < 8 * count:
        raise InputError(f"mask: the density inside it ({n_voxels} voxels above {prb.DENSITY_FRACTION:g} of its maximum) is too small "
                         f"for {count} probes; expected at least {8 * count} voxels")
    labels, masks, count = probes_large_enough(density, count, cfg.seed, voxel, options.is_auto(s.probes))
    folder.mkdir(parents=True, exist_ok=True)
    for p, m in enumerate(masks):
        mrc.write_map(folder / f"{probe_name(p)}.mrc", m, voxel)
    mrc.write_map(folder / "labels.mrc", labels.astype(np.float32), voxel)
    table = read_star(cfg.particles, cfg.project_dir)
    ids = sample_ids(len(table), cfg.seed, s.sample_size)
    sample = table.subset(ids)
    write_star(folder / "sample.star", sample, image_name=relative_image_names(sample, cfg.project_dir))
    np.save(folder / "sample_ids.npy", ids)
    log.info("discover: %d probes (%s) over %d density voxels, %d of %d particles", count,
             "auto: probe diameter %.0f Å = %g × %.2f Å" % (prb.PROBE_DIAMETER_RESOLUTIONS * resolution, prb.PROBE_DIAMETER_RESOLUTIONS, resolution)
             if options.is_auto(s.probes) else "as configured", n_voxels, len(ids), len(table))
    probe_config = dict(dcfg.raw) | {
        "particles": "sample.star", "consensus_map": cfg.consensus_map, "project_dir": cfg.project_dir,
        "modules": [{"name": probe_name(p), "mask": f"{probe_name(p)}.mrc"} for p in range(count)],
        "output": str(out / PROBE_SEARCH_FOLDER), "iterations": 1, "postprocess": {"enabled": False},
    }
    if cfg.consensus_half_maps:
        probe_config["consensus_half_maps"] = list(cfg.consensus_half_maps)
    atomic_write_text(folder / PROBE_CONFIG, "# the probes of lorefine discover as refine modules (written by discover)\n"
                      + yaml.safe_dump(probe_config, sort_keys=False))


def probes_large_enough(density, count: int, seed: int, voxel: float, auto: bool):
    """(labels, soft masks, count) of the probes cut from ``density`` (`probes.cut_probes`, `probes.soft_region_masks`).
    Each probe is refined as a module, so each must hold `refine.preflight.MIN_MODULE_VOLUME_ANGSTROM3`: with ``probes:
    auto`` (``auto``) the count is lowered until every probe's mask does (k-means makes regions of similar mass, not
    volume, so a dense one can fall short of the average); a count given, or a particle too small for two probes, is a
    one-line error."""
    from lorefine_mpi.refine.preflight import MIN_MODULE_VOLUME_ANGSTROM3 as least

    while True:
        labels, _ = prb.cut_probes(density, count, seed)
        masks = prb.soft_region_masks(density, labels, count)
        smallest = min(float(m.sum()) for m in masks) * voxel**3
        if smallest >= least:
            return labels, masks, count
        if not auto:
            raise InputError(f"discover.probes: {count} probes make one of {smallest:,.0f} Å³; each probe is refined as a module, which needs "
                             f"at least {least:,.0f} Å³: expected fewer probes (or auto)")
        if count <= 2:
            raise InputError(f"consensus_map: the particle's density is too small to cut into two probes of at least {least:,.0f} Å³ each "
                             f"(the smallest module lorefine refines); expected a larger particle")
        count -= 1


def sample_ids(n: int, seed: int, size: int) -> np.ndarray:
    """The particles searched (ascending): all when ``n ≤ size``, else a fixed random sample of ``size``."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 31]).choice(n, size=size, replace=False))


# -- the probes' searches -----------------------------------------------------------------------------------------
def search_probes(probe_cfg, dist, recorder) -> dict | None:
    """Every probe's search (collective; module docstring); on rank 0 the measurements `group_and_write` needs, None on
    the others; False on every rank when a stop was asked."""
    from lorefine_mpi.kernels import use_backend
    from lorefine_mpi.refine import engine as eng
    from lorefine_mpi.refine.run import _Run

    use_backend(probe_cfg.compute.backend)
    engine = eng.RefineEngine(probe_cfg, allocate=dist.allocate)
    run = _Run(probe_cfg, dist, recorder, engine)
    if (options.is_auto(probe_cfg.search.max_resolution_angstrom) or probe_cfg.consensus_half_maps) and not run.consensus_halves():
        return False
    n_probes = len(probe_cfg.modules)
    at_consensus = [engine.consensus_poses] * n_probes  # every probe's rest at the consensus poses (module docstring)
    found, centres, spreads = [], [], []
    for index, module in enumerate(probe_cfg.modules):
        stage = eng.Stage(stage_name(1, module.name), 1, index, module.name)
        state = engine.begin_stage(stage, engine.consensus, [engine.consensus] * n_probes, at_consensus)
        poses = run.search(state)
        if poses is None:
            return False
        recorder.record_cpu(stage)
        if dist.is_root:
            stored = recorder.read_stage(stage)
            spreads.append((np.deg2rad(stored["angle_spread_deg"].astype(np.float64)), stored["shift_spread_px"].astype(np.float64)))
        found.append(poses)
        centres.append(state.centre_px)
    if not dist.is_root:
        return None
    return {"matrices": np.stack([p.matrices for p in found]), "origin_px": np.stack([p.origin_px for p in found]),
            "consensus_matrices": engine.consensus_poses.matrices, "consensus_origin_px": engine.consensus_poses.origin_px,
            "angle_spread_rad": np.stack([s[0] for s in spreads]), "shift_spread_px": np.stack([s[1] for s in spreads]),
            "centres_px": np.array(centres), "masks": engine.masks, "consensus": engine.consensus, "voxel": engine.voxel,
            "subset": engine.subset}


# -- coherence, modules, outputs ----------------------------------------------------------------------------------
def measure_coherence(measured: dict, seed: int, settings, shift_widths_px=(), contact=None) -> tuple[np.ndarray, coh.Grouping]:
    """(coherence (P, P), `coherence.Grouping`) of the probes' motions (`discover.coherence`), the common points every
    probe's centre; shift_widths_px: the probes' learned shift priors (px, None where not learned), `coherence.moves`;
    contact: (P, P) the faces each pair of probes shares (`probes.contacts`), or None."""
    points = measured["centres_px"]
    d = coh.displacements_px(measured["matrices"], measured["origin_px"], measured["consensus_matrices"], measured["consensus_origin_px"], points)
    v = coh.displacement_variances(measured["angle_spread_rad"], measured["shift_spread_px"], measured["centres_px"], points)
    c = coh.coherence_matrix(d, v)
    sigma = coh.null_sigma(d, v, seed)
    return c, coh.group_probes(c, sigma, settings.min_coherence, settings.null_z, measured["centres_px"], coh.moves(shift_widths_px), contact)


def group_and_write(dcfg, probe_cfg, measured: dict, write_page: bool) -> dict:
    """Rank 0: the modules from the probes' measurements and every output (module docstring); returns discover.json's
    contents."""
    out = Path(dcfg.output)
    cfg, voxel = dcfg.base, measured["voxel"]
    results = Path(probe_cfg.output) / "results.h5"
    widths = [(stage_prior_sigma(results, stage_name(1, m.name)) or (None, None))[1] for m in probe_cfg.modules]
    labels_volume = mrc.read_map(out / PROBES_FOLDER / "labels.mrc")[0].astype(np.int16)
    contact = prb.contacts(labels_volume, len(probe_cfg.modules))
    c, grouping = measure_coherence(measured, cfg.seed, dcfg.settings, widths, contact)
    if not coh.moves(widths):
        log.info("discover: the probes do not move (median learned shift width %.3f px < %g px): one module",
                 float(np.median([w for w in widths if w is not None])), coh.RIGID_SHIFT_PX)
    density = prb.density_weights(measured["consensus"], None if dcfg.mask is None else mrc.read_map(dcfg.mask)[0])
    module_of_voxel = prb.module_labels(labels_volume, grouping.labels, grouping.by_motion, contact)
    module_masks = prb.soft_region_masks(density, module_of_voxel, grouping.n_modules)
    (out / MASKS_FOLDER).mkdir(exist_ok=True)
    mask_paths = []
    for k, m in enumerate(module_masks):
        path = out / MASKS_FOLDER / f"{module_name(k)}.mrc"
        mrc.write_map(path, m, voxel)
        mask_paths.append(path)
    write_refine_config(dcfg, out / "lorefine.yaml", mask_paths)
    if grouping.n_modules >= 2:
        write_bodies(dcfg, probe_cfg, out / "bodies.star", grouping.labels, module_masks, mask_paths, voxel)
    masses = [float((density * m).sum() / max(density.sum(), 1e-30)) for m in module_masks]
    summary = {
        "probes": len(grouping.labels), "particles_searched": int(measured["matrices"].shape[1]),
        "probe_centres_px": measured["centres_px"].round(3).tolist(), "probe_module": grouping.labels.tolist(),
        "coherence": c.round(4).tolist(), "null_sigma": grouping.null_sigma, "threshold": grouping.threshold,
        "coherent_probes": grouping.coherent.tolist(), "probes_placed_by_motion": grouping.by_motion.tolist(), "modules": grouping.n_modules, "probe_shift_width_px": widths,
        "moving": coh.moves(widths), "module_mass_fraction": masses,
        "criterion": "average-linkage clustering of 1 - coherence, cut at coherence tau = max(null_z * null_sigma, min_coherence); "
                     "every group of >= 2 probes is a module, one module when there is no such group or only one",
        "criterion_curve": {"clusters": grouping.criterion_curve()[0].tolist(), "merge_coherence": grouping.criterion_curve()[1].round(4).tolist()},
        "masks": [os.path.relpath(p, out) for p in mask_paths],
    }
    atomic_write_text(out / "discover.json", json.dumps(summary, indent=1))
    log.info("discover: %d module(s) from %d probes (coherence threshold %.3f = max(%g × null σ %.3f, %g)); probe → module %s",
             grouping.n_modules, len(grouping.labels), grouping.threshold, dcfg.settings.null_z, grouping.null_sigma,
             dcfg.settings.min_coherence, " ".join(str(v + 1) for v in grouping.labels))
    if not grouping.by_motion.all():
        log.info("discover: placed by position (their motion coherent with no module): %s", describe_placed(grouping, contact))
    for k, mass in enumerate(masses):
        log.info("discover: %s: %d probes, %.0f %% of the density, mask %s", module_name(k), int((grouping.labels == k).sum()), 100 * mass, mask_paths[k])
    if write_page:
        from lorefine_mpi.discover.report import write_report_png

        write_report_png(out / "report.png", measured["consensus"], labels_volume, grouping, c, measured["centres_px"], module_of_voxel)
    log.info("discover: next: lorefine refine %s", out / "lorefine.yaml")
    return summary


def describe_placed(grouping, contact) -> str:
    """Where the probes placed by position went (`probes.module_labels`): e.g. ``probe 12 inside module2, probe 3 split
    between module1 and module2``."""
    parts = []
    for p in np.nonzero(~grouping.by_motion)[0]:
        whole = prb.placed_whole(contact, p, grouping.labels, grouping.by_motion)
        touched = np.nonzero(prb.contact_shares(contact, p, grouping.labels, grouping.by_motion) > 0)[0]
        if whole is not None:
            parts.append(f"{probe_name(p)} inside {module_name(whole)}")
        else:
            parts.append(f"{probe_name(p)} split between {' and '.join(module_name(k) for k in touched)}"
                         if len(touched) else f"{probe_name(p)} split among the nearest modules")
    return ", ".join(parts)


def write_refine_config(dcfg, path: Path, mask_paths) -> None:
    """``lorefine.yaml``: a refine config of the same particles and settings with the discovered modules."""
    cfg = dcfg.base
    refine = dict(dcfg.raw) | {
        "particles": cfg.particles, "consensus_map": cfg.consensus_map, "project_dir": cfg.project_dir,
        "modules": [{"name": module_name(k), "mask": os.path.relpath(p, path.parent)} for k, p in enumerate(mask_paths)],
        "output": "refined/",
    }
    if cfg.consensus_half_maps:
        refine["consensus_half_maps"] = list(cfg.consensus_half_maps)
    atomic_write_text(path, "# LO-refinement of the modules lorefine discover found: lorefine refine lorefine.yaml\n"
                      + yaml.safe_dump(refine, sort_keys=False))


def write_bodies(dcfg, probe_cfg, path: Path, labels, module_masks, mask_paths, voxel: float) -> None:
    """``bodies.star`` (RELION multi-body): per module its mask, the σ of its rotation and shift (the median of its
    probes' learned priors; a third of the search window where a prior was flat) and the body whose mask's centre of
    mass is nearest, to rotate relative to."""
    from lorefine_mpi.geometry.volumes import centre_of_mass_px
    from lorefine_mpi.io import relion_job

    results = Path(probe_cfg.output) / "results.h5"
    learned = [stage_prior_sigma(results, stage_name(1, m.name)) or (None, None) for m in probe_cfg.modules]
    search = dcfg.base.search
    centres = np.array([centre_of_mass_px(m) for m in module_masks])
    bodies = []
    for k in range(len(module_masks)):
        mine = [learned[p] for p in np.nonzero(labels == k)[0]]
        rot = [np.rad2deg(r) for r, _ in mine if r is not None]
        px = [s for _, s in mine if s is not None]
        distance = np.linalg.norm(centres - centres[k], axis=1)
        distance[k] = np.inf
        bodies.append({"mask": os.path.relpath(mask_paths[k], dcfg.base.project_dir), "rotate_relative_to": int(np.argmin(distance)) + 1,
                       "sigma_angles_deg": float(np.median(rot)) if rot else search.cone_half_angle_deg / 3.0,
                       "sigma_offset_angstrom": (float(np.median(px)) if px else search.max_shift_px / 3.0) * voxel})
    relion_job.write_bodies_star(path, bodies)
