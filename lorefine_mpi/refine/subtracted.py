"""A module's particles with the rest of the complex subtracted, recentred on the module (optionally re-boxed):
what RELION's ``relion_particle_subtract`` makes from a multi-body run, from a finished lorefine run folder.

For module m and particle i, with the run's final maps and poses (``OUT/MODULE/map.mrc``, the final
poses and the fitted scale k of ``results.h5``):

    f_sub = f − k_i · CTF_i ⊛ ( Σ_{j≠m} P_{A_j,i}[map_j](· + o_j,i) + P_{A_0,i}[R](· + o_0,i) )

where R = combined.mrc − Σ_j map_j is the density outside every mask (as the search used it) at the
consensus pose (A_0, o_0). k is the one the search fitted (``score.mode: subtract``); in ``composite``
mode it is fitted here the same way (least squares of the image against the module and the rest).

Recentring: the module's centre c (its ``centre_px``, else the centre of mass of its map) lands in image
i at u = (A_m c)_xy − o_m (px from the image centre). The image is moved by the whole pixels r = round(u)
(exact: a phase ramp by an integer shift), so that the module sits within half a pixel of the centre,
and cut to ``box_px`` around the centre. Its origin is then r − u against the module map *recentred*
(c at the box centre), which is written beside it (``subtracted_map.mrc``, cropped like the images):
``relion_reconstruct --i subtracted.star`` rebuilds the module at the centre of the (smaller) box,
and ``relion_refine --i subtracted.star --ref subtracted_map.mrc`` can refine it locally.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mrcfile
import numpy as np

from lorefine_mpi.config import load_config
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import rotations, volumes
from lorefine_mpi.io import mrc, results
from lorefine_mpi.io.files import replacing
from lorefine_mpi.io.star import read_star, write_star
from lorefine_mpi.kernels import use_backend
from lorefine_mpi.projection import fourier
from lorefine_mpi.projection.source import ParticleSource
from lorefine_mpi.refine import layout
from lorefine_mpi.refine.engine import uses_ctf
from lorefine_mpi.refine.progress import ProgressLog
from lorefine_mpi.search import local, options

log = logging.getLogger(__name__)

FILES = ("subtracted.mrcs", "subtracted.star", "subtracted_map.mrc", "subtracted_mask.mrc")


def _central(n: int, box_px: int) -> slice:
    return slice(n // 2 - box_px // 2, n // 2 - box_px // 2 + box_px)


def crop_images(images, box_px: int) -> np.ndarray:
    """The central ``box_px`` × ``box_px`` of images (…, N, N): centre N//2 → box_px//2."""
    cut = _central(images.shape[-1], box_px)
    return images[..., cut, cut]


def crop_volume(volume, box_px: int) -> np.ndarray:
    """The central ``box_px``³ of a volume (N, N, N): centre N//2 → box_px//2."""
    cut = _central(volume.shape[-1], box_px)
    return volume[cut, cut, cut]


def write_subtracted(run_dir, name: str, *, box_px: int | None = None, batch: int = 256) -> Path:
    """Write ``RUN/NAME/subtracted.{mrcs,star}`` (and the recentred module map and mask) from a finished run;
    returns the STAR file's path. Image names are relative to the run's project directory (RELION's rule)."""
    run_dir = Path(run_dir).resolve()
    cfg = load_config(run_dir / layout.CONFIG)
    run = layout.RunFolder.of(cfg, run_dir)  # where the folder is now, whatever output its config names
    use_backend(cfg.compute.backend)
    names = [m.name for m in cfg.modules]
    if name not in names:
        raise InputError(f"--module: expected one of {', '.join(names)}, got {name!r}")
    index = names.index(name)
    table = read_star(cfg.particles, cfg.project_dir)
    n, box = len(table), mrc.stack_shape(table.stack_path[0])[-1]
    box_px = box if box_px is None else int(box_px)
    if box_px % 2 or not 16 <= box_px <= box:
        raise InputError(f"--box-px: expected an even number of pixels in [16, {box}] (the particles' box), got {box_px}")
    maps = [mrc.read_map(run.module_folder(m).map)[0] for m in names]
    voxel = mrc.voxel_size_angstrom(run.module_folder(name).map)
    combined, _ = mrc.read_map(run.combined())
    if run.iterations is None:
        raise InputError(f"{run.results}: the run has not finished its last iteration; finish it with lorefine refine --continue")
    finals = [results.read_final_stage(run.results, results.stage_name(run.iterations, m)) for m in names]
    target = finals[index]
    source = ParticleSource(table, box, uses_ctf(cfg, table))
    pad = cfg.reconstruction.padding
    consensus = (table.matrices, table.origin_px)
    rest = [(fourier.prepare_volume(maps[j], pad), (finals[j]["matrix"], finals[j]["origin_px"])) for j in range(len(names)) if j != index]
    remainder = combined - sum(maps)
    if cfg.modules[index].mask is not None and np.abs(remainder).max() > 1e-6 * np.abs(combined).max():
        rest.append((fourier.prepare_volume(remainder, pad), consensus))
    own = cfg.modules[index].centre_px
    centre = volumes.centre_of_mass_px(maps[index]) if own is None else np.asarray(own, dtype=np.float64)
    fit_k = not options.SCORE_MODES[cfg.score.mode].subtracts_rest and rest  # the search did not fit k
    module_fvol = fourier.prepare_volume(maps[index], pad) if fit_k else None
    matrices, origin = target["matrix"], target["origin_px"]
    u = np.einsum("nij,j->ni", matrices, centre)[:, :2] - origin
    whole = np.round(u)
    folder = run.module_folder(name).path
    stack = folder / "subtracted.mrcs"
    tracker = ProgressLog(f"subtract {name}", n)
    try:
        with replacing(stack, suffix=".mrcs") as tmp, mrcfile.new_mmap(tmp, shape=(n, box_px, box_px), mrc_mode=2, overwrite=True) as out:
            out.voxel_size = voxel
            for start in range(0, n, batch):
                ids = np.arange(start, min(n, start + batch))
                images_ft = source.spectra(ids)
                if rest:
                    ctf = source.ctf(ids)
                    rest_ft = sum(fourier.project(fvol, p[0][ids], p[1][ids], ctf=ctf) for fvol, p in rest)
                    # NaN: the search could not fit k (module and rest alike) and left the rest in the image; so does this
                    k = np.nan_to_num(target["rest_scale"][ids].astype(np.float64), nan=0.0)
                    if fit_k:
                        module_ft = fourier.project(module_fvol, matrices[ids], origin[ids], ctf=ctf)
                        k = np.array([local.fit_rest_scale(f, m, r)[1] for f, m, r in zip(images_ft, module_ft, rest_ft)])
                    images_ft = images_ft - (k[:, None, None] * rest_ft).astype(np.complex64)
                moved = fourier.to_real(fourier.shift_images_ft(images_ft, whole[ids]), box)
                out.data[ids] = crop_images(moved, box_px)
                tracker.add(len(ids))
    finally:
        source.close()
    mask = mrc.read_map(run.module_folder(name).mask)[0]
    mrc.write_map(folder / "subtracted_map.mrc", crop_volume(volumes.recentre(maps[index], centre), box_px), voxel)
    # the recentring is a Fourier shift, whose ringing takes a soft mask slightly outside [0, 1] (−0.007 … 1.009 seen):
    # clipped, as RELION requires of a mask
    mrc.write_map(folder / "subtracted_mask.mrc", np.clip(crop_volume(volumes.recentre(mask, centre), box_px), 0.0, 1.0), voxel)
    rot, tilt, psi = rotations.matrix_to_euler(matrices)
    relative = os.path.relpath(stack, cfg.project_dir)
    star = folder / "subtracted.star"
    write_star(star, table, rot_rad=rot, tilt_rad=tilt, psi_rad=psi, origin_px=whole - u,
               image_name=[f"{i + 1:06d}@{relative}" for i in range(n)],
               extra_columns={"rlnImageOriginalName": list(table.image_name)}, image_size_px=box_px)
    log.info("subtract %s: wrote %s (%d particles, box %d, centre (%.2f, %.2f, %.2f) px)", name, star, n, box_px, *centre)
    return star
