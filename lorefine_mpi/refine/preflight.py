"""Validate a run before any heavy work: what `lorefine check` reports and `lorefine refine` does first
(`check_run`; refine then takes the output folder's lock and looks at the folder again under it).

Inputs (`check_inputs`), each refused in one line that names the file, key or value and what was expected:
    - names: no module named like one of the run's own folders (`layout.reserved_module_name`);
    - files: the STAR file (every number finite, image names, half sets 1 and 2 both used, no image named twice,
      even under two stack names), the stacks (regular files of square images of the map's box, every image the
      STAR file names inside its stack, a sample of images free of NaN/Inf: every image is checked again when the
      search reads it), the map (cubic, even, finite, not constant), the masks (finite, in [0, 1] with a maximum
      of 1, the map's box and voxel size, large enough to align a module, not the whole box, not the same module
      twice), the consensus half maps (the map's box, two different maps, particles with their half sets);
    - physical plausibility (`check_particle_values`, `_check_search`, `_check_contrast`): the CTF (voltage, Cs,
      amplitude contrast, defocus, B-factor, scale factor) when it is used, the origins against the box, a
      module's rotation centre inside the box, a search band of at least `MIN_BAND_RINGS` rings, a score mask of
      at least `MIN_SCORE_MASK_PX` px, protein density brighter inside the masks than outside (not a
      contrast-inverted map). Where real data can legitimately be odd, a warning instead (`Summary.warnings`);
    - what the settings cost (`refine.cost`): the memory one process certainly needs and the work against a sane
      run, before the run allocates anything large.
Output folder (`check_output`): a run folder of this config (results.h5 with its settings, inputs and particle
stacks, for --continue), or a new or empty folder, or one holding only what lorefine made (`io.files`) and nothing
this run would overwrite; never one where an input would be overwritten; not in use by a live run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from lorefine_mpi.config.schema import dump_config, search_fingerprint
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import volumes
from lorefine_mpi.io import files, mrc, results, runlock
from lorefine_mpi.io.files import same_file
from lorefine_mpi.io.star import read_star
from lorefine_mpi.reconstruction.reconstruct import half_subsets
from lorefine_mpi.refine import cost as cost_mod
from lorefine_mpi.refine import layout
from lorefine_mpi.search import options
from lorefine_mpi.search.band import band_from_resolution

PIXEL_TOLERANCE = 1e-3  # relative
# A module must be large enough to be aligned on its own: 10,000 Å³ is about 8 kDa of protein (1.21 Å³/Da),
# far below what any body of a multi-body refinement is; a mask smaller than that is a mistake (a
# threshold or scale gone wrong).
MIN_MODULE_VOLUME_ANGSTROM3 = 10_000.0
MAX_MASK_FILL = 0.9  # a mask filling more of the box than this separates no module from the rest
MAX_MASK_OVERLAP = 0.5  # two modules' soft masks share their edges, not most of the smaller one
MIN_BAND_RINGS = 3.0  # the search's band holds at least this many Fourier rings (a coarser one compares blobs)
MIN_SCORE_MASK_PX = 4.0  # the score's round mask is at least this wide (a few pixels hold no module)
# the CTF of RELION's STAR files: ranges outside which a value is a mistake (refused) or unusual (a warning)
VOLTAGE_KV = (10.0, 1000.0)
CS_MM = (-1.0, 20.0)  # a corrector can leave a slightly negative Cs (a warning below 0)
DEFOCUS_ANGSTROM = 200_000.0  # 20 µm of defocus, either way (overfocus, negative, is a warning)
DEFOCUS_SMALL_ANGSTROM = 100.0  # closer to focus than this: a warning (µm given for Å?)
CTF_BFACTOR_ANGSTROM2 = 1000.0  # RELION's per-particle CTF B-factors are tens of Å²
CTF_BFACTOR_EXPONENT = 40.0  # nor may exp(−B k²/4) at Nyquist leave e^±40 (float32 holds e^±88)
CTF_SCALE = (0.0, 100.0)  # refused outside (0, 100]; a warning outside [0.1, 10]
CTF_SCALE_USUAL = (0.1, 10.0)


@dataclasses.dataclass
class ModuleSummary:
    name: str
    volume_angstrom3: float
    centre_angstrom: np.ndarray
    search: object  # the module's SearchConfig (the global one with its own values in place)
    centre_given: bool = False
    mask_diameter_px: float | None = None  # its round 2D CCC mask (search.mask_diameter_px, else the one the search makes)


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
    warnings: list = dataclasses.field(default_factory=list)  # where real data can be odd: printed by check, logged by refine
    cost: object = None  # the run's `refine.cost.Cost`
    stacks: dict | None = None  # the particle stacks' identity (`io.mrc.stack_identity`), kept in the checkpoint

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
                out.append(f"    own search: {_window(m.search)}; {_evaluations(m.search)}")
        out.append(f"search           {_evaluations(cfg.search)}")
        out.append(f"                 {_window(cfg.search)}")
        return out


def _evaluations(search) -> str:
    """How the strategy scores a particle, and its CCC evaluations per particle and module, said once."""
    k = options.candidate_counts(search)
    orientations = f"{k['n_orientations']:.0f} orientations ({k['n_directions']:.0f} directions × {k['n_psi']} ψ)"
    if options.STRATEGIES[search.strategy].exhaustive:
        how = f"{search.strategy}: {orientations}, each at {k['n_shifts']} shifts"
    else:
        how = (f"{search.strategy}: {search.n_random_angles} random orientations, each at {k['n_shifts']} shifts, then "
               f"{orientations} at their mean best shift")
    return f"{how} = {k['evaluations_per_particle']:.0f} CCC evaluations per particle and module"


def _window(search) -> str:
    """The search window and prior of a SearchConfig."""

    def prior(value, unit):
        return options.PriorWidth.of(value).describe(unit)

    angles = "angles refined between grid points (quadratic)" if options.ANGLE_REFINEMENTS[search.angle_refinement].refines else "angles on the grid"
    return (f"cone {search.cone_half_angle_deg:g}° in {search.angular_step_deg:g}° steps, ψ ±{search.psi_half_range_deg:g}° in "
            f"{search.psi_step_deg:g}° steps, shifts ±{search.max_shift_px:g} px in {search.shift_step_px:g} px steps; "
            f"prior σ {prior(search.prior_sigma_deg, '°')} / {prior(search.prior_sigma_px, ' px')}, {search.likelihood} likelihood; {angles}")


def check_run(cfg, resume: bool, sample_size: int = 100, lock_in_use: bool = True) -> Summary:
    """Everything `lorefine check` and `lorefine refine` verify before heavy work; InputError on the first
    problem (lock_in_use: see `check_output`)."""
    summary = check_inputs(cfg, sample_size)
    summary.warnings += check_output(cfg, resume, summary.input_files, lock_in_use, summary.stacks)
    return summary


def check_inputs(cfg, sample_size: int = 100) -> Summary:
    """Raise InputError on the first problem with the inputs of ``cfg``; return a summary otherwise."""
    from lorefine_mpi.refine.engine import uses_ctf

    _check_module_names(cfg)
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
    use_ctf = uses_ctf(cfg, table)
    _check_ctf(cfg, table)
    warnings = _check_search(cfg, box, voxel)
    _check_half_sets(cfg, table)
    _check_half_maps(cfg, table, box, voxel)
    stacks, _ = check_stacks(table, cfg.particles, box, cfg.consensus_map)
    warnings += check_particle_values(table, cfg.particles, box, use_ctf)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(table), size=min(sample_size, len(table)), replace=False))
    mrc.read_images(table, sample)  # refuses NaN/Inf, naming the image
    summaries, masks = [], []
    for module in cfg.modules:
        mask = _checked_mask(cfg, module, volume, voxel)
        masks.append((module, mask))
        centre = volumes.centre_of_mass_px(volume, mask) if module.centre_px is None else np.asarray(module.centre_px)
        search = module.search(cfg.search)
        diameter = search.mask_diameter_px or volumes.auto_mask_diameter_px(mask, centre, box, search.max_shift_px)
        summaries.append(ModuleSummary(module.name, float(mask.sum() * voxel**3), centre * voxel, search, module.centre_px is not None,
                                       float(diameter)))
    _check_overlaps(masks)
    _check_contrast(cfg, volume, masks)
    warnings += _mask_warnings(masks)
    if cfg.subtracted.box_px is not None and cfg.subtracted.box_px > box:
        raise InputError(f"subtracted.box_px: must be at most the particles' box ({box}), got {cfg.subtracted.box_px}")
    cost = cost_mod.estimate(cfg, len(table), box, voxel, [float(m.mean()) for _, m in masks])  # before the run makes anything large
    cost_mod.check_cost(cost, cfg, box)
    inputs = [cfg.particles, cfg.consensus_map, *cfg.consensus_half_maps, *[m.mask for m in cfg.modules if m.mask], *stacks, *([cfg.source] if cfg.source else [])]
    return Summary(len(table), table.optics, len(stacks), box, voxel, table.has_ctf, summaries, inputs, warnings, cost,
                   mrc.stack_identity(table))


def _check_module_names(cfg) -> None:
    """No module is named like one of the run's own folders or files (whatever the case)."""
    for i, module in enumerate(cfg.modules):
        why = layout.reserved_module_name(module.name)
        if why:
            raise InputError(f"modules[{i}].name: {module.name!r} is reserved for lorefine's own outputs ({why}); choose another name")


def _check_ctf(cfg, table) -> None:
    if cfg.score.ctf is True and not table.has_ctf:
        raise InputError(f"score.ctf: true, but {cfg.particles} has no _rlnDefocusU column; expected defocus values (or score.ctf: auto or false)")


def check_particle_values(table, path, box: int, use_ctf: bool) -> list[str]:
    """The STAR file's numbers are physically plausible for images of ``box`` px: the origins put every particle's centre
    inside its image, and, when the CTF is used, its parameters lie in the ranges above (refused in one line naming the
    particle or optics group, the value and the range); returns warnings for values real data may hold but rarely do."""
    warnings = []
    apix = table.pixel_size_angstrom()
    half = box / 2
    origin = np.abs(table.origin_px)
    if (origin > half).any():
        i, axis = np.unravel_index(int(np.argmax(origin)), origin.shape)
        column = ("rlnOriginX", "rlnOriginY")[axis] if "rlnOriginX" in table.columns or "rlnOriginY" in table.columns else \
            ("rlnOriginXAngst", "rlnOriginYAngst")[axis]
        value = table.origin_px[i, axis] * (1.0 if column in ("rlnOriginX", "rlnOriginY") else apix[i])
        raise InputError(f"{path}: _{column} of particle {i + 1} is {value:g} {'px' if column in ('rlnOriginX', 'rlnOriginY') else 'Å'} "
                         f"({table.origin_px[i, axis]:g} px); expected within ±{half:g} px (half the {box}-px box: the particle's centre "
                         "inside its image)")
    if not use_ctf:
        return warnings
    for g in table.optics.values():
        where = f"{path}: optics group {g.name}"
        if not VOLTAGE_KV[0] <= g.voltage_kv <= VOLTAGE_KV[1]:
            raise InputError(f"{where}: _rlnVoltage {g.voltage_kv:g} kV; expected {VOLTAGE_KV[0]:g}–{VOLTAGE_KV[1]:g} kV (300 on most microscopes)")
        if not CS_MM[0] <= g.cs_mm <= CS_MM[1]:
            raise InputError(f"{where}: _rlnSphericalAberration {g.cs_mm:g} mm; expected {CS_MM[0]:g}–{CS_MM[1]:g} mm (2.7 on a Krios)")
        if g.cs_mm < 0:
            warnings.append(f"{where}: _rlnSphericalAberration {g.cs_mm:g} mm is negative (a Cs corrector can leave a little; "
                            "otherwise a sign mistake)")
        if not 0 <= g.amplitude_contrast < 1:
            raise InputError(f"{where}: _rlnAmplitudeContrast must be in [0, 1), got {g.amplitude_contrast:g}")

    def worst(values, bad):
        i = int(np.argmax(bad))
        return i + 1, values[i]

    for name, values in (("rlnDefocusU", table.defocus_u_angstrom), ("rlnDefocusV", table.defocus_v_angstrom)):
        bad = np.abs(values) > DEFOCUS_ANGSTROM
        if bad.any():
            i, v = worst(values, bad)
            raise InputError(f"{path}: _{name} of particle {i} is {v:g} Å; expected at most {DEFOCUS_ANGSTROM:,.0f} Å (20 µm) either way "
                             "(positive = underfocus)")
        if (values < 0).any():
            i, v = worst(values, values < 0)
            warnings.append(f"{path}: _{name} of particle {i} is {v:g} Å: overfocus (negative defocus; {_particles(int((values < 0).sum()))}) "
                            "is unusual: check the sign convention (RELION: positive = underfocus)")
        tiny = np.abs(values) < DEFOCUS_SMALL_ANGSTROM
        if tiny.any():
            i, v = worst(values, tiny)
            warnings.append(f"{path}: _{name} of particle {i} is {v:g} Å ({_particles(int(tiny.sum()))} below {DEFOCUS_SMALL_ANGSTROM:g} Å): "
                            "even phase-plate data are taken a few hundred Å from focus: is it in µm? (RELION: Å)")
    b = table.ctf_bfactor_angstrom2
    exponent = np.abs(b) / (16.0 * apix**2)  # |B| k²/4 at Nyquist, k = 1 / (2 · pixel size)
    bad = (np.abs(b) > CTF_BFACTOR_ANGSTROM2) | (exponent > CTF_BFACTOR_EXPONENT)
    if bad.any():
        i, v = worst(b, bad)
        limit = min(CTF_BFACTOR_ANGSTROM2, CTF_BFACTOR_EXPONENT * 16.0 * float(apix[i - 1]) ** 2)
        raise InputError(f"{path}: _rlnCtfBfactor of particle {i} is {v:g} Å²; expected |B| ≤ {limit:g} Å² (RELION's per-particle CTF "
                         "B-factors are tens of Å²; this one would scale the CTF by e^±{:.3g} at Nyquist)".format(float(exponent[i - 1])))
    scale = table.ctf_scale
    bad = (scale <= CTF_SCALE[0]) | (scale > CTF_SCALE[1])
    if bad.any():
        i, v = worst(scale, bad)
        raise InputError(f"{path}: _rlnCtfScalefactor of particle {i} is {v:g}; expected a factor in ({CTF_SCALE[0]:g}, {CTF_SCALE[1]:g}] "
                         "(1 by default; 0 would erase the particle's CTF and so its image)")
    odd = (scale < CTF_SCALE_USUAL[0]) | (scale > CTF_SCALE_USUAL[1])
    if odd.any():
        i, v = worst(scale, odd)
        warnings.append(f"{path}: _rlnCtfScalefactor of particle {i} is {v:g} ({_particles(int(odd.sum()))} outside "
                        f"[{CTF_SCALE_USUAL[0]:g}, {CTF_SCALE_USUAL[1]:g}]): their images are weighted so in the maps")
    return warnings


def _particles(n: int) -> str:
    return f"{n} particle{'' if n == 1 else 's'}"


def _check_search(cfg, box: int, voxel: float) -> list[str]:
    """The search's band, score mask and the modules' rotation centres against the box."""
    warnings = []
    res = cfg.search.max_resolution_angstrom
    if res != "auto":
        rings = box * voxel / res
        if rings < MIN_BAND_RINGS:
            raise InputError(f"search.max_resolution_angstrom: {res:g} Å is {rings:.2g} Fourier rings at this box ({box} px of {voxel:g} Å "
                             f"= {box * voxel:g} Å); expected a finer resolution, at most {box * voxel / MIN_BAND_RINGS:.4g} Å "
                             f"({MIN_BAND_RINGS:g} rings), or auto")
        if band_from_resolution(res, voxel, box) < rings:
            warnings.append(f"search.max_resolution_angstrom: {res:g} Å is finer than the search's band reaches at this box "
                            f"({box * voxel / (box // 2 - 1):.3g} Å, N/2 − 1 rings; Nyquist {2 * voxel:g} Å): that band is used")
    diameter = cfg.search.mask_diameter_px
    if diameter is not None and diameter < MIN_SCORE_MASK_PX:
        raise InputError(f"search.mask_diameter_px: {diameter:g} px holds {int(volumes.circular_mask(box, diameter).sum())} pixels; "
                         f"expected at least {MIN_SCORE_MASK_PX:g} px (the module's projected width; null for automatic)")
    half = box / 2
    for i, module in enumerate(cfg.modules):
        if module.centre_px is not None and max(abs(c) for c in module.centre_px) > half:
            raise InputError(f"modules[{i}].centre_px: {list(module.centre_px)} px from the box centre; expected a point inside "
                             f"the {box}-px box (each coordinate within ±{half:g} px)")
    return warnings


def _check_half_maps(cfg, table, box: int, voxel: float) -> None:
    """``consensus_half_maps``: two different maps of the consensus's box and voxel size, and a STAR file that says which
    half each particle belongs to (the maps were reconstructed from those halves; a drawn split would not match)."""
    if not cfg.consensus_half_maps:
        return
    halves = []
    for path in cfg.consensus_half_maps:
        half, half_voxel = mrc.read_map(path)
        if half.shape != (box, box, box):
            raise InputError(f"{path}: shape {half.shape}; expected the consensus map's ({box}, {box}, {box}) (consensus_half_maps)")
        if abs(half_voxel - voxel) > PIXEL_TOLERANCE * voxel:
            raise InputError(f"{path}: voxel size {half_voxel:g} Å differs from {cfg.consensus_map}'s {voxel:g} Å; expected the same "
                             "(consensus_half_maps)")
        halves.append(half)
    if (table.random_subset == 0).any():
        raise InputError(f"consensus_half_maps: {cfg.particles} has particles without _rlnRandomSubset; expected the half sets the "
                         "half maps were reconstructed from (1 or 2 for every particle)")
    mrc.require_distinct(cfg.consensus_half_maps[0], halves[0], cfg.consensus_half_maps[1], halves[1], "consensus_half_maps")


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


def check_stacks(table, star_path, box: int | None = None, map_path=None) -> tuple[list, int]:
    """(the stacks, the images' box): every stack is a regular file of square images of one box (``box``, the map's
    at ``map_path``, when given) holding the images the STAR file names, each named once."""
    stacks = {}
    file_ids = {}
    for path in dict.fromkeys(table.stack_path.tolist()):
        if not os.path.exists(path):
            name = table.image_name[np.argmax(table.stack_path == path)]
            raise InputError(
                f"{star_path}: _rlnImageName {name}: particle stack not found in the project directory {table.project_dir} "
                f"(project_dir; RELION opens image names from there) nor beside the STAR file"
            )
        shape = mrc.stack_shape(path)
        if shape[1] != shape[2]:
            raise InputError(f"{path}: images are {shape[2]} × {shape[1]} px; expected square images")
        if box is None:
            box = shape[1]
        if shape[1] != box:
            other = f"{map_path} has box {box}" if map_path else f"{next(iter(stacks))} holds {box}-px images"
            raise InputError(f"{path}: images are {shape[1]} px wide but {other}; expected the same")
        stacks[path] = shape[0]
        used = table.image_index[table.stack_path == path]
        if used.max() >= shape[0]:
            bad = int(used.max()) + 1
            raise InputError(f"{star_path}: image {bad:06d}@{Path(path).name} is beyond the stack, which holds {shape[0]} images")
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
            f"{star_path}: particles {j + 1} and {k + 1} are the same image ({table.image_name[j]} and "
            f"{table.image_name[k]} name one file); expected each image once"
        )
    return list(stacks), box


def _checked_mask(cfg, module, volume, voxel) -> np.ndarray:
    """The module's mask in [0, 1] (all ones for ``whole``), InputError for one that cannot be a module's."""
    if module.mask is None:
        return np.ones_like(volume)
    mask, mask_voxel = mrc.read_mask(module.mask, volume.shape)
    if abs(mask_voxel - voxel) > PIXEL_TOLERANCE * voxel:
        raise InputError(f"{module.mask}: voxel size {mask_voxel:g} Å differs from {cfg.consensus_map}'s {voxel:g} Å; expected the same")
    total = float(mask.sum())
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


def _mask_warnings(masks) -> list[str]:
    """A soft mask is 1 inside its module: one whose maximum is below 1 scales the module's density."""
    return [f"{module.mask}: the mask's largest value is {mask.max():.3g}; a soft mask is 1 inside its module, so the module's density "
            f"is scaled by up to {mask.max():.3g} where the mask is used" for module, mask in masks
            if module.mask is not None and mask.max() < 1 - mrc.MASK_TOLERANCE]


def _check_contrast(cfg, volume, masks) -> None:
    """Protein density is positive (brighter than the solvent): inside every module's mask the map's mean is above its
    mean outside all masks. A contrast-inverted map (as some programs write) is refused: its scores would be
    anti-correlations."""
    masked = [(i, module, mask) for i, (module, mask) in enumerate(masks) if module.mask is not None]
    if not masked:
        return
    outside = 1.0 - np.clip(sum(mask for _, _, mask in masked), 0.0, 1.0)
    if outside.sum() < 0.01 * outside.size:
        return  # the masks fill the box: no solvent to compare with
    solvent = float((volume * outside).sum() / outside.sum())
    for i, module, mask in masked:
        inside = float((volume * mask).sum() / mask.sum())
        if inside <= solvent:
            raise InputError(
                f"{cfg.consensus_map}: the map is darker inside modules[{i}] ({module.name})'s mask (mean {inside:.3g}) than outside "
                f"every mask (mean {solvent:.3g}); expected protein density positive (white), as RELION writes maps: is the map "
                "contrast-inverted, or the mask off the module?"
            )


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


def check_output(cfg, resume: bool, input_files, lock_in_use: bool = True, stacks: dict | None = None) -> list[str]:
    """The output folder may take this run (module docstring); returns warnings. lock_in_use: refuse a folder whose lock a
    live run seems to hold (`lorefine check`; `lorefine refine` takes the lock instead). stacks: the particle stacks'
    identity (`io.mrc.stack_identity`), compared with the checkpoint's on --continue."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"output: {out} is {files.kind_of(os.stat(out).st_mode)}; expected a folder")
    if not files.creatable(out):
        raise InputError(f"output: {out} cannot be created (no writable folder above it)")
    held = files.live_run_holding(out.parent)  # a run's own folder is judged by its lock below; a folder above it here
    if held:
        raise InputError(f"output: {held}; use a folder outside it")
    existing = layout.existing_outputs(cfg)
    own_config = out / layout.CONFIG

    def own(path: Path) -> bool:  # the resolved config this run wrote (an earlier lorefine listed it in no manifest)
        return path == own_config and path.is_file() and path.read_text(encoding="utf-8", errors="replace") == dump_config(cfg)

    for path in existing:
        for given in input_files:
            if same_file(path, given):
                if own(path):
                    continue  # the resolved config this run wrote, given back to it: it stays as it is
                raise InputError(f"output: {path} is an input of this run ({given}) where lorefine writes its outputs; "
                                 "use another output folder")
    warnings = []
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
        warnings += results.check_resumable(checkpoint, search_fingerprint(cfg), stacks)
    else:
        clashes = [p for p in existing if not own(p)]
        if clashes:
            more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
            raise InputError(
                f"output: {out} holds {clashes[0].relative_to(out)}{more}, which this run would overwrite, but no {layout.RESULTS} "
                "of a lorefine run; use an empty or new output folder"
            )
        foreign = files.foreign_entry(out, own)
        if foreign is not None:
            raise InputError(f"output: {out} holds {foreign.relative_to(out)}, which lorefine did not write, and no {layout.RESULTS}; "
                             "expected a new or empty folder (or a lorefine run's folder, to resume it)")
    if lock_in_use and (out / runlock.NAME).exists():
        holder = runlock.current(out)
        if holder is not None:
            raise InputError(f"output: {out} is in use by another lorefine run ({holder})")
    return warnings


def check_run_outputs(option: str, folder, paths) -> Path:
    """The outputs ``paths`` that a command adds to a lorefine run's folder (`lorefine report`, `lorefine subtract`): the
    folder holds a run (its results.h5), no live run holds it, and each output is a regular file or absent (the run owns
    the names it writes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; expected a lorefine refine output folder")
    for name in (layout.CONFIG, layout.RESULTS):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: no {name}; expected a lorefine refine output folder")
    held = files.live_run_holding(folder)
    if held:
        raise InputError(f"{option}: {held}; wait for it to end")
    for path in paths:
        files.refuse_non_regular(path, option)
    return folder
