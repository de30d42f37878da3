"""`lorefine simulate`: datasets of a flexible complex made with the paper's protocol (Materials and Methods).

Per particle: a uniform random orientation A and a consensus origin o ~ N(0, origin_sigma_px) per axis;
each module k rotated about a random axis through its own centre of mass c_k by an angle ~ N(0, σ_rot)
and shifted by t_k ~ N(0, σ_shift) per axis (paper: 1.67°, 1 px; every module moves). With
``motion.axis: [x, y, z]`` (not in the paper) every rotation is about that one axis (complex frame, through
each module's centre) instead of a random one: a motion along a known direction, e.g. to check that a
principal component analysis of the refined motion finds it. The image is the
sum of the unmoved modules projected with their composed poses (``A_k = A Q_k``,
``o_k = o + (A_k d_k)_xy``, ``d_k = c_k − Q_kᵀ(c_k + t_k)``; exactly the moved module, no 3D resampling),
times the CTF (optional, in defocus groups), times a camera MTF (optional), plus white Gaussian noise.

SNR (as in the paper and the RELION-made fixtures): the mean over images of the variance of the
noise-free image over the whole box, divided by the noise variance. Images are then scaled so the noise
has unit standard deviation (noise-free sets: the clean signal has unit standard deviation).

Camera (optional, for an InSilicoTEM-like set): the signal and noise are detected through
``MTF(ω) = a / (1 + α ω²) + (1 − a) / (1 + β ω²)`` with ω the spatial frequency as a fraction of Nyquist
(a CCD-like two-term model); keys ``camera.mtf_a``, ``camera.mtf_alpha``, ``camera.mtf_beta``. The SNR is
that of the detected images: the white noise is drawn so that, after the MTF, its variance is the
noise-free (detected) image variance over the SNR.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import mrcfile
import numpy as np
import yaml

from lorefine_mpi.config.schema import checked_value, read_yaml, resolve_path, resolved_folder, unknown_key
from lorefine_mpi.errors import InputError
from lorefine_mpi.geometry import rotations
from lorefine_mpi.io import mrc
from lorefine_mpi.io.files import replacing
from lorefine_mpi.io.particles import OpticsGroup
from lorefine_mpi.io.star import atomic_write_text, table_from_columns, write_star
from lorefine_mpi.projection import ctf as ctf_model
from lorefine_mpi.projection import fourier
from lorefine_mpi.projection.source import ParticleSource
from lorefine_mpi.reconstruction.reconstruct import backproject_all
from lorefine_mpi.simulate.phantoms import make_phantom

log = logging.getLogger(__name__)

_RULES = {
    "seed": ("int", lambda v: v >= 0, "must be >= 0"),
    "n_particles": ("int", lambda v: 2 <= v <= 10_000_000, "must be in [2, 10000000]"),
    "box": ("int", lambda v: 16 <= v <= 1024 and v % 2 == 0, "must be an even number in [16, 1024]"),
    "pixel_size_angstrom": ("float", lambda v: 0 < v <= 100, "must be in (0, 100]"),
    "origin_sigma_px": ("float", lambda v: 0 <= v <= 20, "must be in [0, 20]"),
    "motion.sigma_rot_deg": ("float", lambda v: 0 <= v <= 45, "must be in [0, 45]"),
    "motion.sigma_shift_px": ("float", lambda v: 0 <= v <= 10, "must be in [0, 10]"),
    "noise.snr": ("optional_float", lambda v: v > 0, "must be > 0 (or null for noise-free images)"),
    "ctf.defocus_min_um": ("float", lambda v: 0 < v <= 20, "must be in (0, 20]"),
    "ctf.defocus_max_um": ("float", lambda v: 0 < v <= 20, "must be in (0, 20]"),
    "ctf.n_defocus_groups": ("int", lambda v: v >= 1, "must be >= 1"),
    "ctf.astigmatism_angstrom": ("float", lambda v: 0 <= v <= 5000, "must be in [0, 5000]"),
    "ctf.voltage_kv": ("float", lambda v: 10 <= v <= 1000, "must be in [10, 1000]"),
    "ctf.cs_mm": ("float", lambda v: 0 <= v <= 10, "must be in [0, 10]"),
    "ctf.amplitude_contrast": ("float", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "camera.mtf_a": ("float", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "camera.mtf_alpha": ("float", lambda v: v >= 0, "must be >= 0"),
    "camera.mtf_beta": ("float", lambda v: v >= 0, "must be >= 0"),
    "phantom.seed": ("int", lambda v: v >= 0, "must be >= 0"),
}
_DEFAULTS = {
    "seed": 1, "n_particles": 2000, "box": 64, "pixel_size_angstrom": 4.0, "origin_sigma_px": 2.0,
    "motion": {"sigma_rot_deg": 1.67, "sigma_shift_px": 1.0, "axis": None}, "noise": {"snr": 0.25}, "ctf": None, "camera": None,
    "phantom": {"seed": 11}, "source": "phantom",
}
_CTF_DEFAULTS = {"defocus_min_um": 1.0, "defocus_max_um": 3.0, "n_defocus_groups": 9, "astigmatism_angstrom": 200.0,
                 "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.1}
_CAMERA_DEFAULTS = {"mtf_a": 0.7, "mtf_alpha": 10.0, "mtf_beta": 0.5}


@dataclasses.dataclass
class SimulateConfig:
    output: str
    seed: int
    n_particles: int
    box: int
    pixel_size_angstrom: float
    origin_sigma_px: float
    motion: dict
    noise: dict
    ctf: dict | None
    camera: dict | None
    phantom: dict
    source: object  # "phantom", {"map": path, "masks": [paths]} or {"modules": [paths]}


def load_simulate_config(path) -> SimulateConfig:
    path = Path(path)
    return simulate_config_from_dict(read_yaml(path) or {}, resolved_folder(path))


def simulate_config_from_dict(raw, folder: Path) -> SimulateConfig:
    if not isinstance(raw, dict):
        raise InputError("simulate config: expected a mapping at the top level")
    keys = list(_DEFAULTS) + ["output"]
    for key in raw:
        if key not in keys:
            raise unknown_key(str(key), key, keys)
    if "output" not in raw:
        raise InputError("output: required key missing (the dataset folder to write)")
    values = {}
    for key, default in _DEFAULTS.items():
        given = raw.get(key, default)
        if key in ("motion", "noise", "phantom", "ctf", "camera"):
            if given is None:
                values[key] = None
                continue
            base = {"ctf": _CTF_DEFAULTS, "camera": _CAMERA_DEFAULTS}.get(key, default)
            if not isinstance(given, dict):
                raise InputError(f"{key}: expected a mapping, got {given!r}")
            merged = dict(base)
            allowed = list(base) + (["modules"] if key == "phantom" else [])  # phantom.modules: only when given
            for sub, value in given.items():
                if sub not in allowed:
                    raise unknown_key(f"{key}.{sub}", sub, allowed)
                special = {"motion.axis": _axis, "phantom.modules": _mass_fractions}.get(f"{key}.{sub}")
                merged[sub] = special(value) if special else checked_value(f"{key}.{sub}", value, _RULES)
            values[key] = merged
        elif key == "source":
            values[key] = _source(given, folder)
        else:
            values[key] = checked_value(key, given, _RULES)
    if values["phantom"] and values["phantom"].get("modules") is not None and values["source"] != "phantom":
        raise InputError("phantom.modules: only used with source: phantom; remove it or set source: phantom")
    if values["ctf"] and values["ctf"]["defocus_min_um"] > values["ctf"]["defocus_max_um"]:
        raise InputError("ctf.defocus_min_um: must not exceed ctf.defocus_max_um")
    return SimulateConfig(output=resolve_path("output", raw["output"], folder), **values)


def _axis(value):
    """motion.axis: null (a random axis per particle and module) or three numbers, not all zero."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
            or not any(value)):
        raise InputError(f"motion.axis: expected null or three numbers [x, y, z], not all zero, got {value!r}")
    return [float(v) for v in value]


def _mass_fractions(value):
    """phantom.modules: null (the two-module default phantom) or K ≥ 2 mass fractions, each in (0, 1), summing to 1."""
    numbers = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    if value is None:
        return None
    if not numbers or not 2 <= len(value) <= 20 or not all(0 < v < 1 for v in value) or abs(sum(value) - 1.0) > 0.01:
        raise InputError(f"phantom.modules: expected null or 2 to 20 mass fractions, each in (0, 1), summing to 1 "
                         f"(within 0.01), e.g. [0.57, 0.28, 0.15]; got {value!r}")
    return [float(v) for v in value]


def _source(value, folder):
    if value == "phantom":
        return "phantom"
    if isinstance(value, dict) and set(value) == {"map", "masks"} and isinstance(value["masks"], list) and len(value["masks"]) >= 2:
        return {"map": resolve_path("source.map", value["map"], folder),
                "masks": [resolve_path(f"source.masks[{i}]", m, folder) for i, m in enumerate(value["masks"])]}
    if isinstance(value, dict) and set(value) == {"modules"} and isinstance(value["modules"], list) and len(value["modules"]) >= 2:
        return {"modules": [resolve_path(f"source.modules[{i}]", m, folder) for i, m in enumerate(value["modules"])]}
    raise InputError("source: expected 'phantom', {map: MAP, masks: [MASK, ...]} or {modules: [MAP, ...]} with >= 2 modules")


def _module_maps(cfg: SimulateConfig):
    """(module maps, masks) in the simulation box."""
    from lorefine_mpi.simulate.phantoms import soft_masks

    if cfg.source == "phantom":
        ph = make_phantom(cfg.box, cfg.phantom["seed"], mass_fractions=cfg.phantom.get("modules"))
        return ph.module_maps, ph.masks
    if "map" in cfg.source:
        volume, _ = mrc.read_map(cfg.source["map"])
        masks = [np.clip(mrc.read_map(m)[0], 0, 1) for m in cfg.source["masks"]]
        maps = [volume * m for m in masks]
    else:
        maps = [mrc.read_map(m)[0] for m in cfg.source["modules"]]
        masks = soft_masks(maps)
    for m in maps:
        if m.shape != (cfg.box,) * 3:
            raise InputError(f"box: the source maps are {m.shape[0]} px but box is {cfg.box}; expected the same")
    return maps, masks


def uniform_rotations(rng, n) -> np.ndarray:
    """n rotations uniform on SO(3) (normalised Gaussian quaternions): (n, 3, 3)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def camera_mtf(box, camera) -> np.ndarray:
    """(N, N//2+1) MTF of the camera model (module docstring) in lorefine's rfft2 layout."""
    kx, ky = fourier.image_frequencies(box)
    w2 = (kx**2 + ky**2) / (box / 2) ** 2
    a = camera["mtf_a"]
    return (a / (1 + camera["mtf_alpha"] * w2) + (1 - a) / (1 + camera["mtf_beta"] * w2)).astype(np.float32)


def full_spectrum_mean_square(half, box) -> float:
    """Mean of |H|² over the full (N, N) spectrum, from H (N, N//2+1) in rfft2 layout."""
    return float((np.abs(half) ** 2 * fourier.half_axis_multiplicity(box)).sum() / box**2)


def simulate(cfg: SimulateConfig, batch: int | None = None) -> dict:
    """Write the dataset into ``cfg.output``; returns the realised statistics. batch: images per step (default
    `batch_size`); the images do not depend on it (every random draw is made up front or in image order)."""
    started = time.time()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n, box, apix = cfg.n_particles, cfg.box, cfg.pixel_size_angstrom
    maps, masks = _module_maps(cfg)
    from lorefine_mpi.geometry.volumes import centre_of_mass_px

    centres = np.array([centre_of_mass_px(m) for m in maps])
    # Every random draw up front (so results do not depend on the batch size).
    A = uniform_rotations(rng, n)
    origin = rng.normal(0, cfg.origin_sigma_px, (n, 2))
    k_mod = len(maps)
    axes = rng.normal(size=(k_mod, n, 3))  # drawn even with a fixed axis, so the other draws stay the same
    if cfg.motion.get("axis") is not None:
        axes = np.broadcast_to(np.asarray(cfg.motion["axis"], dtype=np.float64), axes.shape)
    angles_deg = rng.normal(0, cfg.motion["sigma_rot_deg"], (k_mod, n))
    shifts = rng.normal(0, cfg.motion["sigma_shift_px"], (k_mod, n, 3))
    q = rotations.rotation_about_axis(axes, np.deg2rad(angles_deg))
    module_poses = [rotations.compose_module_pose(A, origin, q[k], centres[k], shifts[k]) for k in range(k_mod)]
    ctf_params = None
    if cfg.ctf:
        c = cfg.ctf
        groups = np.arange(n) * c["n_defocus_groups"] // n
        mean = rng.uniform(c["defocus_min_um"], c["defocus_max_um"], c["n_defocus_groups"]) * 1e4
        ast_angle = rng.uniform(0, np.pi, c["n_defocus_groups"])
        du, dv = (mean + c["astigmatism_angstrom"] / 2)[groups], (mean - c["astigmatism_angstrom"] / 2)[groups]
        ctf_params = (du, dv, ast_angle[groups], groups)
    mtf = camera_mtf(box, cfg.camera) if cfg.camera else None
    noise_seed = rng.integers(2**63)
    stack_path = out / "particles.mrcs"
    with replacing(stack_path, suffix=".mrcs") as tmp_stack:
        with mrcfile.new_mmap(tmp_stack, shape=(n, box, box), mrc_mode=2, overwrite=True) as stack:
            stack.voxel_size = apix  # the header; the images are written below with plain file I/O
            images = _Rows(tmp_stack, stack.data.offset, (box, box), stack.data.dtype)
        batch = batch or batch_size(box)
        batches = [np.arange(start, min(n, start + batch)) for start in range(0, n, batch)]

        def ctf_of(rows):
            if not ctf_params:
                return None
            return ctf_model.ctf_2d(box, apix, ctf_params[0][rows], ctf_params[1][rows], ctf_params[2][rows],
                                    cfg.ctf["voltage_kv"], cfg.ctf["cs_mm"], cfg.ctf["amplitude_contrast"])

        # The noise-free spectra, one module at a time (one padded module spectrum in memory at once), summed in a
        # scratch file in the same order as sum(module 1, module 2, ...) would: the same bits.
        spectra = _Rows(out / ".spectra.tmp", 0, (box, box // 2 + 1), np.complex64, create=n)
        try:
            for k in range(k_mod):
                fvol = fourier.prepare_volume(maps[k], 2)
                for rows in batches:
                    projection = fourier.project(fvol, module_poses[k][0][rows], module_poses[k][1][rows], ctf=ctf_of(rows))
                    spectra.write(rows[0], 0 + projection if k == 0 else spectra.read(rows[0], len(rows)) + projection)
                del fvol
            variances = np.empty(n)
            for rows in batches:
                spectrum = spectra.read(rows[0], len(rows))
                if mtf is not None:
                    spectrum = spectrum * mtf
                clean = fourier.to_real(spectrum, box)
                variances[rows] = clean.reshape(len(rows), -1).var(axis=1)
                images.write(rows[0], clean)
        finally:
            spectra.remove()
        signal_var = float(variances.mean())
        snr = cfg.noise["snr"] if cfg.noise else None
        noise_sd = np.sqrt(signal_var / snr) if snr else 0.0  # of the noise as detected (after the MTF)
        # White noise through the MTF keeps mean(MTF²) over the full spectrum of its variance (Parseval).
        white_sd = noise_sd / np.sqrt(full_spectrum_mean_square(mtf, box)) if mtf is not None else noise_sd
        scale = 1.0 / noise_sd if snr else 1.0 / np.sqrt(signal_var)
        noise_rng = np.random.default_rng(noise_seed)
        achieved = []
        for rows in batches:
            clean = np.asarray(images.read(rows[0], len(rows)), dtype=np.float64)
            if snr:
                noise = noise_rng.normal(0, white_sd, clean.shape)
                if mtf is not None:
                    noise = fourier.to_real(fourier.to_fourier(noise) * mtf, box)
                achieved.append(clean.reshape(len(clean), -1).var(axis=1).mean() / noise.var())
                clean = clean + noise
            images.write(rows[0], (clean * scale).astype(np.float32))
            if rows[0] and rows[0] % (10 * batch) == 0:
                log.info("simulate: %d/%d images", rows[0], n)
    optics = [OpticsGroup(1, "opticsGroup1", apix, box, cfg.ctf["voltage_kv"] if cfg.ctf else 300.0,
                          cfg.ctf["cs_mm"] if cfg.ctf else 2.7, cfg.ctf["amplitude_contrast"] if cfg.ctf else 0.1)]
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
    subset = (np.arange(n) % 2) + 1

    def star(path, matrices, origins):
        rot, tilt, psi = (np.rad2deg(a) for a in rotations.matrix_to_euler(matrices))
        columns = {"rlnImageName": names, "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                   "rlnOriginXAngst": origins[:, 0] * apix, "rlnOriginYAngst": origins[:, 1] * apix,
                   "rlnOpticsGroup": np.ones(n, int), "rlnRandomSubset": subset}
        if ctf_params:
            columns |= {"rlnMicrographName": [f"mic{g + 1:03d}.mrc" for g in ctf_params[3]],
                        "rlnDefocusU": ctf_params[0], "rlnDefocusV": ctf_params[1],
                        "rlnDefocusAngle": np.rad2deg(ctf_params[2]), "rlnCtfBfactor": np.zeros(n),
                        "rlnCtfScalefactor": np.ones(n), "rlnPhaseShift": np.zeros(n)}
        new = table_from_columns(optics, columns, path, project_dir=out)
        write_star(path, new)
        return new

    table = star(out / "particles.star", A, origin)
    for k in range(k_mod):
        star(out / f"gt_module_{k + 1}.star", *module_poses[k])
    whole = sum(maps)
    for k, (m, mask) in enumerate(zip(maps, masks), 1):
        mrc.write_map(out / f"gt_module_{k}.mrc", m * scale, apix)
        mrc.write_map(out / f"mask_module_{k}.mrc", mask, apix)
    mrc.write_map(out / "gt_whole.mrc", whole * scale, apix)
    mrc.write_map(out / "mask_whole.mrc", np.clip(sum(masks), 0, 1), apix)
    del maps, masks, whole  # not needed by the consensus reconstruction
    consensus = reconstruct_consensus(table, box, use_ctf=bool(cfg.ctf))
    mrc.write_map(out / "consensus.mrc", consensus, apix)
    stats = {
        "signal_variance": signal_var, "noise_sd": float(noise_sd),
        "achieved_snr": float(np.mean(achieved)) if achieved else None, "image_scale": float(scale),
        "median_module_rotation_deg": [float(np.median(np.abs(a))) for a in angles_deg],
        "median_module_shift_px": [float(np.median(np.linalg.norm(s, axis=1))) for s in shifts],
        "centres_px": centres.tolist(), "seconds": round(time.time() - started, 1),
    }
    description = dataclasses.asdict(cfg) | {"statistics": stats, "snr_definition":
                  "mean over images of var(noise-free image, whole box) / var(noise)"}
    atomic_write_text(out / "dataset.yaml", yaml.safe_dump(description, sort_keys=False))
    refine = {
        "particles": "particles.star", "consensus_map": "consensus.mrc",
        "modules": [{"name": name, "mask": f"mask_module_{k + 1}.mrc"} for k, name in enumerate(module_names(k_mod))],
        "search": {"strategy": "separate", "cone_half_angle_deg": 10, "angular_step_deg": 2, "psi_half_range_deg": 6,
                   "psi_step_deg": 2, "max_shift_px": 4, "shift_step_px": 1, "n_random_angles": 10},
        "score": {"mode": "subtract"}, "iterations": 2, "output": "refined/", "seed": cfg.seed,
    }
    atomic_write_text(out / "lorefine.yaml", "# LO-refinement of this dataset: lorefine refine lorefine.yaml\n" + yaml.safe_dump(refine, sort_keys=False))
    return stats


def module_count(cfg: SimulateConfig) -> int:
    """How many modules the dataset's source holds (the phantom: two, or as many as phantom.modules lists)."""
    if cfg.source == "phantom":
        return len(cfg.phantom.get("modules") or (0, 0))
    return len(cfg.source["masks"] if "masks" in cfg.source else cfg.source["modules"])


def output_names(n_modules: int) -> list[str]:
    """The files `simulate` writes into its folder."""
    per_module = [name for k in range(1, n_modules + 1) for name in (f"gt_module_{k}.star", f"gt_module_{k}.mrc", f"mask_module_{k}.mrc")]
    return ["particles.mrcs", "particles.star", *per_module, "gt_whole.mrc", "mask_whole.mrc", "consensus.mrc", "dataset.yaml", "lorefine.yaml"]


def input_files(cfg: SimulateConfig) -> list[str]:
    """The files a simulation reads (none for the phantom)."""
    if cfg.source == "phantom":
        return []
    return [cfg.source["map"], *cfg.source["masks"]] if "map" in cfg.source else list(cfg.source["modules"])


def memory_bytes(cfg: SimulateConfig) -> dict:
    """{part: bytes} a simulation certainly holds at once (a lower bound of its peak, `refine.cost`): the modules'
    maps and one module's padded spectrum (padding 2; `simulate` projects one module at a time), then the
    consensus map's reconstruction."""
    from lorefine_mpi.refine.cost import reconstruction_bytes

    k, box = module_count(cfg), cfg.box
    spectrum = float(np.prod(fourier.band_shape(box, 2))) * 8.0
    maps = 2 * k * box**3 * 4.0
    return {"module spectrum": spectrum, "maps": maps} | reconstruction_bytes(box, 2)


def batch_size(box: int) -> int:
    """Images per step: 500 up to box 64 (as every release made them), then fewer so that a step's arrays stay
    at the size of box 64's (2^21 pixels per array: 16 MB of float64) at any box."""
    return max(1, min(500, 2**21 // box**2))


class _Rows:
    """Rows of a C-ordered array of shape (n, *row_shape) in a binary file from byte ``offset``, read and written
    with plain file I/O, not a memory map: the written pages go to the page cache and do not stay in this
    process's resident memory (a memory-mapped stack of 10,000 images of 256² is 2.6 GB resident once written).
    create=n: make (or truncate) the file to hold n rows."""

    def __init__(self, path, offset: int, row_shape, dtype, create: int | None = None):
        self.path, self.offset, self.row_shape, self.dtype = Path(path), int(offset), tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        if create is not None:
            with open(self.path, "wb") as f:
                f.truncate(self.offset + create * self.row_bytes)

    def write(self, start: int, rows) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        with open(self.path, "r+b") as f:
            f.seek(self.offset + start * self.row_bytes)
            f.write(memoryview(data).cast("B"))

    def read(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, *self.row_shape), dtype=self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise OSError(f"{self.path}: short read")
        return out

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def module_names(k: int) -> list[str]:
    return ["large", "small"] if k == 2 else [f"module{i + 1}" for i in range(k)]


def reconstruct_consensus(table, box, use_ctf) -> np.ndarray:
    """The consensus map (all particles together) from the STAR poses."""
    return backproject_all(ParticleSource(table, box, use_ctf), np.arange(len(table))).reconstruct(consume=True)
