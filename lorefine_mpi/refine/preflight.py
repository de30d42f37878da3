"""Validate a run before any heavy work: what `lorefine check` reports and `lorefine refine` does first
(`check_run`; refine then takes the output folder's lock and looks at the folder again under it).

Inputs (`check_inputs`): the STAR file (every number finite, image names, half sets 1 and 2 both used,
no image named twice, even under two stack names), the stacks (shapes, lengths, a sample of images free
of NaN/Inf: every image is checked again when the search reads it), the map (finite, not all zero), the
masks (finite, in [0, 1], the map's box and voxel size, large enough to align a module, not the whole
box, not the same module twice), and the CTF (score.ctf: true needs defocus values).
Output folder (`check_output`): a run folder of this config (results.h5 with its settings and inputs,
for --continue), or a folder where the run overwrites nothing; never one where an input would be
overwritten; not in use by a live run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from lorefine_mpi.config.schema import dump_config, search_fingerprint
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import volumes
from lorefine_mpi.io import mrc, results, runlock
from lorefine_mpi.io.files import same_file
from lorefine_mpi.io.star import read_star
from lorefine_mpi.reconstruction.reconstruct import half_subsets
from lorefine_mpi.refine import layout
from lorefine_mpi.search import options

PIXEL_TOLERANCE = 1e-3  # relative
MASK_TOLERANCE = 1e-3
# A module must be large enough to be aligned on its own: 10,000 Å³ is about 8 kDa of protein (1.21 Å³/Da),
# far below what any body of a multi-body refinement is; a mask smaller than that is a mistake (a
# threshold or scale gone wrong).
MIN_MODULE_VOLUME_ANGSTROM3 = 10_000.0
MAX_MASK_FILL = 0.9  # a mask filling more of the box than this separates no module from the rest
MAX_MASK_OVERLAP = 0.5  # two modules' soft masks share their edges, not most of the smaller one


@dataclasses.dataclass
class ModuleSummary:
    name: str
    volume_angstrom3: float
    centre_angstrom: np.ndarray
    search: object  # the module's SearchConfig (the global one with its own values in place)
    centre_given: bool = False


@dataclasses.dataclass
class Summary:
    n_particles: int
    optics: dict
    n_stacks: int
    box: int
    pixel_size_angstrom: float
    has_ctf: bool
    modules: list
    input_files: list = dataclasses.field(default_factory=list)

    def lines(self, cfg) -> list[str]:
        out = [
            f"particles        {self.n_particles} in {self.n_stacks} stack(s)",
            f"optics groups    {len(self.optics)}",
        ]
        for g in self.optics.values():
            out.append(f"  {g.name}: {g.pixel_size_angstrom:.4f} Å/px, {g.voltage_kv:g} kV, Cs {g.cs_mm:g} mm, Q0 {g.amplitude_contrast:g}")
        out += [
            f"box              {self.box} px at {self.pixel_size_angstrom:.4f} Å/px ({self.box * self.pixel_size_angstrom:.1f} Å)",
            f"CTF              {'yes' if self.has_ctf else 'no'} (score.ctf: {cfg.score.ctf})",
            "modules",
        ]
        for m in self.modules:
            c = m.centre_angstrom
            what = "rotation centre (centre_px)" if m.centre_given else "centre of mass"
            out.append(f"  {m.name}: mask volume {m.volume_angstrom3:.4g} Å³, {what} ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) Å from the box centre")
            if m.search != cfg.search:
                out.append(f"    own search: {_window(m.search)}")
        k = options.candidate_counts(cfg.search)
        out.append(
            f"search           {cfg.search.strategy}: {k['n_directions']:.0f} directions × {k['n_psi']} ψ = "
            f"{k['n_orientations']:.0f} orientations × {k['n_shifts']} shifts; "
            f"{k['evaluations_per_particle']:.0f} CCC evaluations per particle and module; "
            + ("angles refined between grid points (quadratic)" if options.ANGLE_REFINEMENTS[cfg.search.angle_refinement].refines else "angles on the grid")
        )
        out.append(f"                 {_window(cfg.search)}")
        return out


def _window(search) -> str:
    """The search window and prior of a SearchConfig, and its candidates per particle."""
    k = options.candidate_counts(search)

    def prior(value, unit):
        return options.PriorWidth.of(value).describe(unit)

    return (f"cone {search.cone_half_angle_deg:g}°, ψ ±{search.psi_half_range_deg:g}°, shifts ±{search.max_shift_px:g} px, "
            f"prior σ {prior(search.prior_sigma_deg, '°')} / {prior(search.prior_sigma_px, ' px')}, {search.likelihood} likelihood; "
            f"{k['evaluations_per_particle']:.0f} CCC evaluations per particle")


def _writable(path: Path) -> bool:
    """The output folder can be created: its nearest existing ancestor is a writable directory."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def check_run(cfg, resume: bool, sample_size: int = 100, lock_in_use: bool = True) -> Summary:
    """Everything `lorefine check` and `lorefine refine` verify before heavy work; InputError on the first
    problem (lock_in_use: see `check_output`)."""
    summary = check_inputs(cfg, sample_size)
    check_output(cfg, resume, summary.input_files, lock_in_use)
    return summary


def check_inputs(cfg, sample_size: int = 100) -> Summary:
    """Raise InputError on the first problem with the inputs of ``cfg``; return a summary otherwise."""
    table = read_star(cfg.particles, cfg.project_dir)
    volume, voxel = mrc.read_map(cfg.consensus_map)
    box = volume.shape[0]
    if volume.shape != (box, box, box):
        raise InputError(f"{cfg.consensus_map}: expected a cubic map, got shape {volume.shape}")
    if box % 2:
        raise InputError(f"{cfg.consensus_map}: box size {box} is odd; expected an even box (RELION refuses odd boxes)")
    if np.ptp(volume) == 0:
        raise InputError(f"{cfg.consensus_map}: the map is {volume.flat[0]:g} everywhere; expected the consensus map's density")
    for g in table.optics.values():
        if abs(g.pixel_size_angstrom - voxel) > PIXEL_TOLERANCE * voxel:
            raise InputError(
                f"{cfg.particles}: optics group {g.name} has pixel size {g.pixel_size_angstrom:g} Å but "
                f"{cfg.consensus_map} has {voxel:g} Å; expected the same"
            )
    _check_ctf(cfg, table)
    _check_half_sets(cfg, table)
    _check_half_maps(cfg, table, box, voxel)
    stacks = _check_stacks(cfg, table, box)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(table), size=min(sample_size, len(table)), replace=False))
    mrc.read_images(table, sample)  # refuses NaN/Inf, naming the image
    summaries, masks = [], []
    for module in cfg.modules:
        mask = _checked_mask(cfg, module, volume, voxel)
        masks.append((module, mask))
        centre = volumes.centre_of_mass_px(volume, mask) if module.centre_px is None else np.asarray(module.centre_px)
        summaries.append(ModuleSummary(module.name, float(mask.sum() * voxel**3), centre * voxel, module.search(cfg.search),
                                       module.centre_px is not None))
    _check_overlaps(masks)
    if cfg.subtracted.box_px is not None and cfg.subtracted.box_px > box:
        raise InputError(f"subtracted.box_px: must be at most the particles' box ({box}), got {cfg.subtracted.box_px}")
    inputs = [cfg.particles, cfg.consensus_map, *cfg.consensus_half_maps, *[m.mask for m in cfg.modules if m.mask], *stacks, *([cfg.source] if cfg.source else [])]
    return Summary(len(table), table.optics, len(stacks), box, voxel, table.has_ctf, summaries, inputs)


def _check_ctf(cfg, table) -> None:
    if cfg.score.ctf is True and not table.has_ctf:
        raise InputError(f"score.ctf: true, but {cfg.particles} has no _rlnDefocusU column; expected defocus values (or score.ctf: auto or false)")
    if table.has_ctf and cfg.score.ctf is not False:
        for g in table.optics.values():
            if not 0 <= g.amplitude_contrast < 1:
                raise InputError(f"{cfg.particles}: optics group {g.name}: _rlnAmplitudeContrast must be in [0, 1), got {g.amplitude_contrast:g}")
            if g.voltage_kv <= 0:
                raise InputError(f"{cfg.particles}: optics group {g.name}: _rlnVoltage must be > 0 kV, got {g.voltage_kv:g}")


def _check_half_maps(cfg, table, box: int, voxel: float) -> None:
    """``consensus_half_maps``: two maps of the consensus's box and voxel size, and a STAR file that says which
    half each particle belongs to (the maps were reconstructed from those halves; a drawn split would not match)."""
    if not cfg.consensus_half_maps:
        return
    for path in cfg.consensus_half_maps:
        half, half_voxel = mrc.read_map(path)
        if half.shape != (box, box, box):
            raise InputError(f"{path}: shape {half.shape}; expected the consensus map's ({box}, {box}, {box}) (consensus_half_maps)")
        if abs(half_voxel - voxel) > PIXEL_TOLERANCE * voxel:
            raise InputError(f"{path}: voxel size {half_voxel:g} Å differs from {cfg.consensus_map}'s {voxel:g} Å; expected the same "
                             "(consensus_half_maps)")
    if (table.random_subset == 0).any():
        raise InputError(f"consensus_half_maps: {cfg.particles} has particles without _rlnRandomSubset; expected the half sets the "
                         "half maps were reconstructed from (1 or 2 for every particle)")


def _check_half_sets(cfg, table) -> None:
    """rlnRandomSubset is 1 or 2 (0 or absent: lorefine draws it), and both half sets hold particles."""
    bad = ~np.isin(table.random_subset, (0, 1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{cfg.particles}: _rlnRandomSubset of particle {i + 1} is {table.random_subset[i]}; expected 1 or 2")
    halves = half_subsets(table, cfg.seed)
    counts = [int((halves == h).sum()) for h in (1, 2)]
    if min(counts) == 0:
        raise InputError(
            f"{cfg.particles}: the half sets hold {counts[0]} and {counts[1]} particles; both must hold particles "
            "for the gold-standard half maps (_rlnRandomSubset 1 and 2)"
        )


def _check_stacks(cfg, table, box) -> list:
    """Every stack holds square images of the map's box and the images the STAR file names, each named once."""
    stacks = {}
    file_ids = {}
    for path in dict.fromkeys(table.stack_path.tolist()):
        if not os.path.exists(path):
            name = table.image_name[np.argmax(table.stack_path == path)]
            raise InputError(
                f"{cfg.particles}: _rlnImageName {name}: particle stack not found in the project directory {table.project_dir} "
                f"(project_dir; RELION opens image names from there) nor beside the STAR file"
            )
        shape = mrc.stack_shape(path)
        if shape[1] != shape[2]:
            raise InputError(f"{path}: images are {shape[2]} × {shape[1]} px; expected square images")
        if shape[1] != box:
            raise InputError(f"{path}: images are {shape[1]} px wide but {cfg.consensus_map} has box {box}; expected the same")
        stacks[path] = shape[0]
        used = table.image_index[table.stack_path == path]
        if used.max() >= shape[0]:
            bad = int(used.max()) + 1
            raise InputError(f"{cfg.particles}: image {bad:06d}@{Path(path).name} is beyond the stack, which holds {shape[0]} images")
        st = os.stat(path)
        file_ids[path] = file_ids.setdefault((st.st_dev, st.st_ino), len(file_ids))
    # the same file under two names (a symlink, a hard link, ./ in the path) holds the same images
    file_of_row = np.array([file_ids[p] for p in table.stack_path], dtype=np.int64)
    key = file_of_row * (1 << 40) + table.image_index
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    if (counts > 1).any():
        j = int(first[np.argmax(counts > 1)])
        k = int(np.flatnonzero(key == key[j])[1])
        raise InputError(
            f"{cfg.particles}: particles {j + 1} and {k + 1} are the same image ({table.image_name[j]} and "
            f"{table.image_name[k]} name one file); expected each image once"
        )
    return list(stacks)


def _checked_mask(cfg, module, volume, voxel) -> np.ndarray:
    """The module's mask in [0, 1] (all ones for ``whole``), InputError for one that cannot be a module's."""
    if module.mask is None:
        return np.ones_like(volume)
    mask, mask_voxel = mrc.read_map(module.mask)
    if mask.shape != volume.shape:
        raise InputError(f"{module.mask}: mask box {mask.shape[0]} differs from the map's box {volume.shape[0]}; expected the same")
    if abs(mask_voxel - voxel) > PIXEL_TOLERANCE * voxel:
        raise InputError(f"{module.mask}: voxel size {mask_voxel:g} Å differs from {cfg.consensus_map}'s {voxel:g} Å; expected the same")
    if mask.min() < -MASK_TOLERANCE or mask.max() > 1 + MASK_TOLERANCE:
        raise InputError(f"{module.mask}: mask values must lie in [0, 1], got [{mask.min():.3g}, {mask.max():.3g}]")
    mask = np.clip(mask, 0, 1)
    total = float(mask.sum())
    if total <= 0:
        raise InputError(f"{module.mask}: the mask is empty (all zero)")
    volume_angstrom3 = total * voxel**3
    if volume_angstrom3 < MIN_MODULE_VOLUME_ANGSTROM3:
        raise InputError(
            f"{module.mask}: the mask covers {volume_angstrom3:.4g} Å³ ({total:.4g} voxel{'' if total == 1 else 's'}); a module must be large enough to "
            f"align on its own: expected at least {MIN_MODULE_VOLUME_ANGSTROM3:,.0f} Å³ (about 8 kDa of protein)"
        )
    if total > MAX_MASK_FILL * mask.size:
        raise InputError(
            f"{module.mask}: the mask covers {100 * total / mask.size:.0f} % of the box, so it separates no module from the rest; "
            "expected one module's mask (for the whole map use modules: whole)"
        )
    if np.clip(volume * mask, 0, None).sum() <= 0:
        raise InputError(f"{module.mask}: {cfg.consensus_map} has no positive density inside this mask; expected the module's density")
    return mask


def _check_overlaps(masks) -> None:
    """Two modules may share their masks' soft edges, not most of the smaller one (the same module twice)."""
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            (ma, mask_a), (mb, mask_b) = masks[a], masks[b]
            if ma.mask is None or mb.mask is None:
                continue
            shared = float(np.minimum(mask_a, mask_b).sum()) / min(float(mask_a.sum()), float(mask_b.sum()))
            if shared > MAX_MASK_OVERLAP:
                raise InputError(
                    f"modules[{b}].mask: {mb.mask} overlaps modules[{a}] ({ma.name})'s mask by {100 * shared:.0f} % of the smaller; "
                    "expected one mask per separate module"
                )


def check_output(cfg, resume: bool, input_files, lock_in_use: bool = True) -> None:
    """The output folder may take this run (module docstring). lock_in_use: refuse a folder whose lock a
    live run seems to hold (`lorefine check`; `lorefine refine` takes the lock instead)."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"output: {out} is a file; expected a folder")
    if not _writable(out):
        raise InputError(f"output: {out} cannot be created (no writable folder above it)")
    existing = layout.existing_outputs(cfg)
    own_config = out / layout.CONFIG
    for path in existing:
        for given in input_files:
            if same_file(path, given):
                if path == own_config and path.read_text() == dump_config(cfg):
                    continue  # the resolved config this run wrote, given back to it: it stays as it is
                raise InputError(f"output: {path} is an input of this run ({given}) where lorefine writes its outputs; "
                                 "use another output folder")
    checkpoint = out / layout.RESULTS
    if checkpoint.exists():
        if not resume:
            last = layout.RunFolder.of(cfg).iterations  # None: iterations: auto, not settled yet
            done, total = results.stages_done(checkpoint), (last or cfg.convergence.max_iterations + 1) * len(cfg.modules)
            if done >= total:
                raise InputError(f"output: {out} holds a finished lorefine run ({layout.RESULTS}); use a new output folder "
                                 "(or --continue to write its outputs again)")
            raise InputError(f"output: {out} holds a lorefine run ({layout.RESULTS}, {done}{f' of {total}' if last else ''} stages done); "
                             "use --continue to resume it, or a new output folder")
        results.check_resumable(checkpoint, search_fingerprint(cfg))
    else:
        clashes = [p for p in existing if not (p == own_config and p.read_text() == dump_config(cfg))]
        if clashes:
            more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
            raise InputError(
                f"output: {out} holds {clashes[0].relative_to(out)}{more}, which this run would overwrite, but no {layout.RESULTS} "
                "of a lorefine run; use an empty or new output folder"
            )
    if lock_in_use and (out / runlock.NAME).exists():
        holder = runlock.current(out)
        if holder is not None:
            raise InputError(f"output: {out} is in use by another lorefine run ({holder})")
