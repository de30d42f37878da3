"""Validate a run's inputs without computing (what `lorefine check` and `lorefine refine` do first)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import candidates
from lorefine_mpi.io import mrc
from lorefine_mpi.io.star import read_star
from lorefine_mpi.search import modules as module_ops

PIXEL_TOLERANCE = 1e-3  # relative
MASK_TOLERANCE = 1e-3


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
        k = candidates.candidate_counts(cfg.search)
        out.append(
            f"search           {cfg.search.strategy}: {k['n_directions']:.0f} directions × {k['n_psi']} ψ = "
            f"{k['n_orientations']:.0f} orientations × {k['n_shifts']} shifts; "
            f"{k['evaluations_per_particle']:.0f} CCC evaluations per particle and module; "
            + ("angles refined between grid points (quadratic)" if cfg.search.angle_refinement == "quadratic" else "angles on the grid")
        )
        out.append(f"                 {_window(cfg.search)}")
        return out


def _window(search) -> str:
    """The search window and prior of a SearchConfig, and its candidates per particle."""
    k = candidates.candidate_counts(search)

    def prior(value, unit):
        return "flat" if value is None else ("auto" if value == "auto" else f"{value:g}{unit}")

    return (f"cone {search.cone_half_angle_deg:g}°, ψ ±{search.psi_half_range_deg:g}°, shifts ±{search.max_shift_px:g} px, "
            f"prior σ {prior(search.prior_sigma_deg, '°')} / {prior(search.prior_sigma_px, ' px')}; "
            f"{k['evaluations_per_particle']:.0f} CCC evaluations per particle")


def _writable(path: Path) -> bool:
    """The output folder can be created: its nearest existing ancestor is a writable directory."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def check_inputs(cfg, sample_size: int = 100) -> Summary:
    """Raise InputError on the first problem with the inputs of ``cfg``; return a summary otherwise."""
    table = read_star(cfg.particles, cfg.project_dir)
    volume, voxel = mrc.read_map(cfg.consensus_map)
    box = volume.shape[0]
    if volume.shape != (box, box, box):
        raise InputError(f"{cfg.consensus_map}: expected a cubic map, got shape {volume.shape}")
    if box % 2:
        raise InputError(f"{cfg.consensus_map}: box size {box} is odd; expected an even box (RELION refuses odd boxes)")
    for g in table.optics.values():
        if abs(g.pixel_size_angstrom - voxel) > PIXEL_TOLERANCE * voxel:
            raise InputError(
                f"{cfg.particles}: optics group {g.name} has pixel size {g.pixel_size_angstrom:g} Å but "
                f"{cfg.consensus_map} has {voxel:g} Å; expected the same"
            )
    stacks = {}
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
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(table), size=min(sample_size, len(table)), replace=False))
    images = mrc.read_images(table, sample)
    finite = np.isfinite(images).all(axis=(1, 2))
    if not finite.all():
        i = sample[np.argmin(finite)]
        raise InputError(f"{table.stack_path[i]}: image {table.image_index[i] + 1} holds NaN or Inf values")
    summaries = []
    for module in cfg.modules:
        if module.mask is None:
            mask = np.ones_like(volume)
        else:
            mask, mask_voxel = mrc.read_map(module.mask)
            if mask.shape != volume.shape:
                raise InputError(f"{module.mask}: mask box {mask.shape[0]} differs from the map's box {box}; expected the same")
            if not np.isfinite(mask).all() or mask.min() < -MASK_TOLERANCE or mask.max() > 1 + MASK_TOLERANCE:
                raise InputError(f"{module.mask}: mask values must lie in [0, 1], got [{np.nanmin(mask):.3g}, {np.nanmax(mask):.3g}]")
            if mask.sum() <= 0:
                raise InputError(f"{module.mask}: the mask is empty (all zero)")
        centre = module_ops.centre_of_mass_px(volume, mask) if module.centre_px is None else np.asarray(module.centre_px)
        summaries.append(ModuleSummary(module.name, float(mask.sum() * voxel**3), centre * voxel, module.search(cfg.search),
                                       module.centre_px is not None))
    if cfg.subtracted.box_px is not None and cfg.subtracted.box_px > box:
        raise InputError(f"subtracted.box_px: must be at most the particles' box ({box}), got {cfg.subtracted.box_px}")
    if not _writable(Path(cfg.output)):
        raise InputError(f"output: {cfg.output} cannot be created (no writable folder above it)")
    return Summary(len(table), table.optics, len(stacks), box, voxel, table.has_ctf, summaries)
