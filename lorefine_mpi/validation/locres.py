"""Local resolution from two half maps: the phase-randomisation-corrected FSC inside a soft spherical
window slid over the map, as ``relion_postprocess --locres`` defines it, computed in batches.

For every centre c of a grid with spacing ``step`` (inside the sphere of radius N/2 − r that RELION
samples, and near ``support`` when given):
    1. the window ``w`` (1 within ``radius``, a raised cosine to 0 over ``edge``, RELION's
       raisedCosineMask) around c, cut out of both half maps and of both phase-randomised half maps
       (phases beyond ``randomise_from`` = 25 Å, as RELION's --locres_randomize_at) as small boxes of
       D = 2 (radius + edge) + 2 px, D even (the window is zero beyond, so a box of its own size holds it);
    2. batched ``rfftn`` of the boxes, the FSC per shell of the D box (`fsc.fsc_curve`'s definition),
       corrected with the phase-randomised one (`fsc.corrected_fsc`);
    3. the local resolution: where the corrected FSC first falls below 0.143, interpolated between the
       shells of the D box (the D box has N/D times coarser shells than the whole map, so the crossing
       is interpolated rather than read at the last shell as RELION does on its full-box FSC), and at
       most ``lowest`` (50 Å, RELION's --locres_minres).
The map: as RELION, every voxel takes the window-weighted mean of the centres' spatial frequencies,
``res(x) = Σ_c w_c(x) / Σ_c w_c(x) / res_c`` (the window added at every centre in turn);
voxels no window reaches are 0.

The centres are split over the ranks of a context (``share``, ``reduce_sum``, ``is_root``); the same
centres and the same random phases on every rank make the result independent of the number of ranks.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.spatial

from lorefine_mpi.process_memory import release_freed_memory
from lorefine_mpi.validation import fsc as fsc_mod

THRESHOLD = 0.143
MEMORY_ELEMENTS = 1 << 23  # about this many voxels of boxes per batch (4 arrays of float32 + their spectra)


@dataclasses.dataclass(frozen=True)
class LocresSettings:
    """Window and sampling in Å (defaults: relion_postprocess --locres with --locres_sampling 25)."""

    radius_angstrom: float = 12.5  # flat part of the window (RELION: half the sampling)
    edge_angstrom: float = 25.0  # raised-cosine edge (RELION: the sampling)
    step_angstrom: float = 25.0  # spacing of the window centres (RELION: --locres_sampling)
    randomise_from_angstrom: float = 25.0  # RELION's --locres_randomize_at
    lowest_angstrom: float = 50.0  # RELION's --locres_minres

    def in_voxels(self, voxel_size_angstrom: float, box: int):
        """(radius px, edge px, step px, D): the window's box D is even and at most the map's box."""
        radius = max(self.radius_angstrom / voxel_size_angstrom, 1.0)
        edge = max(self.edge_angstrom / voxel_size_angstrom, 1.0)
        step = max(int(round(self.step_angstrom / voxel_size_angstrom)), 1)
        d = int(np.ceil(2 * (radius + edge))) + 2
        d += d % 2
        if d > box:  # a window wider than the map: shrink it to fit, keeping its shape
            scale = (box - 2) / (2 * (radius + edge))
            radius, edge, d = radius * scale, edge * scale, box
        return radius, edge, step, d


@dataclasses.dataclass
class LocresResult:
    """map_angstrom: (N, N, N) float32, local resolution in Å (0 where no window reaches);
    centres_px: (k, 3) int, window centres as [z, y, x] voxel indices; resolution_angstrom: (k,) per centre;
    window_box: D; seconds: wall time of this rank's part and the assembly."""

    map_angstrom: np.ndarray
    centres_px: np.ndarray
    resolution_angstrom: np.ndarray
    window_box: int
    settings: LocresSettings
    seconds: float


def window(d: int, radius_px: float, edge_px: float, size: int | None = None) -> np.ndarray:
    """(size, size, size) float64 raised-cosine sphere centred at index d // 2 (size defaults to d)."""
    size = d if size is None else size
    axis = np.arange(size) - d // 2
    r = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    return np.where(r <= radius_px, 1.0, np.where(r >= radius_px + edge_px, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - radius_px) / edge_px)))


def window_centres(box: int, radius_px: float, step_px: int, support=None) -> np.ndarray:
    """(k, 3) int [z, y, x] centres: the grid through the box centre with spacing ``step_px``, inside the
    sphere of radius N/2 − radius (RELION), and, with ``support`` (N, N, N), within a step of a voxel
    where it is > 0 (so every supported voxel has a centre at most √3/2 steps away)."""
    c = box // 2
    offsets = np.arange(-(c // step_px), c // step_px + 1) * step_px
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.sqrt((grid**2).sum(1)) < box / 2 - radius_px]
    centres = grid + c
    centres = centres[np.all((centres >= 0) & (centres < box), axis=1)]
    if support is not None:
        inside = np.asarray(support) > 0
        if not inside.any():
            return np.zeros((0, 3), dtype=np.int64)
        centres = centres[distance_to_support(inside, centres) <= step_px * np.sqrt(3) / 2 + 1]
    return centres.astype(np.int64)


def distance_to_support(inside, points) -> np.ndarray:
    """Euclidean distance (px) from each of ``points`` (k, 3) voxel indices to the nearest voxel where ``inside`` (N, N, N)
    bool is True: 0 inside, else the distance to the nearest voxel of its surface (a voxel of the support with a neighbour
    outside it, or on the box's faces), where the nearest supported voxel of an outside point always lies (a step from an
    inner voxel towards the point would be supported and nearer). The same distances as a Euclidean distance transform
    of the box, without its maps (768 MB at box 256)."""
    points = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    surface = np.argwhere(inside & ~scipy.ndimage.binary_erosion(inside))
    distance, _ = scipy.spatial.cKDTree(surface).query(points)
    return np.where(inside[points[:, 0], points[:, 1], points[:, 2]], 0.0, distance)


def _boxes(padded, centres, d):
    """(k, d, d, d) float32 boxes of ``padded`` (the map padded by d // 2 each side) around ``centres``."""
    idx = np.arange(d)
    z = centres[:, 0, None] + idx
    y = centres[:, 1, None] + idx
    x = centres[:, 2, None] + idx
    return padded[z[:, :, None, None], y[:, None, :, None], x[:, None, None, :]]


def crossing_angstrom(curves, d: int, voxel_size_angstrom: float, threshold: float = THRESHOLD, lowest: float = np.inf) -> np.ndarray:
    """Per row of ``curves`` (k, d//2+1): the resolution (Å) where it first falls below ``threshold``
    (after shell 0), interpolated linearly in frequency; Nyquist when it never does; at most ``lowest``."""
    c = np.asarray(curves)
    k, m = c.shape
    below = c[:, 1:] < threshold
    has = below.any(axis=1)
    first = np.where(has, below.argmax(axis=1) + 1, m - 1)
    rows = np.arange(k)
    c0, c1 = c[rows, first - 1], c[rows, first]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(has & (c0 != c1), (c0 - threshold) / (c0 - c1), 1.0)
    shell = np.where(has, first - 1 + np.clip(frac, 0.0, 1.0), m - 1)
    with np.errstate(divide="ignore"):
        res = np.where(shell > 0, d * voxel_size_angstrom / np.maximum(shell, 1e-12), np.inf)
    return np.minimum(res, lowest)


def padded(volume, d: int) -> np.ndarray:
    """``volume`` in single precision, padded by d // 2 on every side (what `_boxes` cuts windows of D from)."""
    return np.pad(np.asarray(volume, dtype=np.float32), d // 2)


def centre_resolutions(pads, centres, voxel_size_angstrom: float, settings: LocresSettings, n: int) -> np.ndarray:
    """Local resolution (Å) at ``centres`` (k, 3) from the half maps and their phase-randomised copies, each `padded`
    (half 1, half 2, then their copies); n: the box."""
    radius, edge, _, d = settings.in_voxels(voxel_size_angstrom, n)
    w = window(d, radius, edge).astype(np.float32)
    shells = fsc_mod.shell_index(d)
    m = d // 2 + 1
    randomise_from = max(1, int(d * voxel_size_angstrom / settings.randomise_from_angstrom))
    batch = max(1, MEMORY_ELEMENTS // d**3)
    out = np.empty(len(centres))
    s = shells.ravel()
    keep = s < m
    for start in range(0, len(centres), batch):
        chunk = centres[start : start + batch]
        k = len(chunk)
        fts = [scipy.fft.rfftn(_boxes(p, chunk, d) * w, axes=(1, 2, 3), workers=1) for p in pads]
        offset = (np.arange(k)[:, None] * m + s[None, keep]).ravel()

        def sums(values):
            return np.bincount(offset, values.reshape(k, -1)[:, keep].ravel(), minlength=k * m).reshape(k, m)

        curves = []
        for f1, f2 in (fts[:2], fts[2:]):
            cross, p1, p2 = sums((np.conj(f1) * f2).real), sums(np.abs(f1) ** 2), sums(np.abs(f2) ** 2)
            with np.errstate(invalid="ignore", divide="ignore"):
                curve = np.where(p1 * p2 > 0, cross / np.sqrt(p1 * p2), 0.0)
            curve[:, 0] = 1.0
            curves.append(curve)
        corrected = fsc_mod.corrected_fsc(curves[0], curves[1], randomise_from)
        out[start : start + k] = crossing_angstrom(corrected, d, voxel_size_angstrom, THRESHOLD, settings.lowest_angstrom)
    return out


def assemble_map(box: int, centres, resolution_angstrom, radius_px: float, edge_px: float, d: int) -> np.ndarray:
    """RELION's weighting ``Σ_c w_c(x) / Σ_c w_c(x) / res_c``: the window (size D + 1, its centre at D // 2) added
    at every centre in turn, cut at the box's faces; 0 where no window reaches. Returns (N, N, N) float32 Å.
    (Summed window by window: two maps of the box, where a convolution by FFT of the centre grid held six of a
    larger box.)"""
    kernel = window(d, radius_px, edge_px, size=d + 1)
    total = np.zeros((box,) * 3)
    frequency = np.zeros((box,) * 3)
    for centre, resolution in zip(np.asarray(centres), np.asarray(resolution_angstrom, dtype=np.float64)):
        low = centre - d // 2
        start, stop = np.maximum(low, 0), np.minimum(low + d + 1, box)
        inside = tuple(slice(a, b) for a, b in zip(start, stop))
        piece = kernel[tuple(slice(a, b) for a, b in zip(start - low, stop - low))]
        total[inside] += piece
        frequency[inside] += piece * (1.0 / resolution)
    reached = total > 1e-6
    out = np.zeros((box,) * 3, dtype=np.float32)
    out[reached] = (total[reached] / np.maximum(frequency[reached], 1e-12)).astype(np.float32)
    return out


def local_resolution(ctx, half1, half2, voxel_size_angstrom: float, settings: LocresSettings = LocresSettings(), *,
                     support=None, seed: int = 0) -> LocresResult | None:
    """Local-resolution map of two half maps (N, N, N) float (module docstring), computed by all ranks of
    ``ctx`` (each takes a block of window centres; a serial context runs them all). Every rank must call
    it with the same arguments; the result is returned on the root rank, None elsewhere.
    support: optional (N, N, N) mask; only windows near its non-zero voxels are computed."""
    started = time.time()
    n = np.shape(half1)[0]
    radius, edge, step, d = settings.in_voxels(voxel_size_angstrom, n)
    centres = window_centres(n, radius, step, support)
    rng = np.random.default_rng(seed)  # one stream: half 1's phases, then half 2's
    shell = max(1, int(n * voxel_size_angstrom / settings.randomise_from_angstrom))
    # The four maps the windows are cut from, each kept only padded in single precision (one double-precision map at a time)
    pads = [padded(half1, d), padded(half2, d)]
    pads += [padded(fsc_mod.randomise_phases_beyond(half, shell, rng), d) for half in (half1, half2)]
    release_freed_memory()  # the randomisation's spectra, free: their pages are not the windows' (process_memory)
    mine = ctx.share(len(centres))
    resolution = np.zeros(len(centres))
    if len(mine):
        resolution[mine] = centre_resolutions(pads, centres[mine], voxel_size_angstrom, settings, n)
    del pads  # before the map is assembled
    ctx.reduce_sum(resolution)
    if not ctx.is_root:
        return None
    volume = assemble_map(n, centres, resolution, radius, edge, d) if len(centres) else np.zeros((n,) * 3, np.float32)
    return LocresResult(volume, centres, resolution, d, settings, time.time() - started)


# -- outputs ---------------------------------------------------------------------------------------
def summary(result: LocresResult, mask=None, bins: int = 30) -> dict:
    """Statistics of the map inside ``mask`` > 0.5 (or wherever a window reached): median, percentiles,
    a histogram, and the settings."""
    values = _values(result.map_angstrom, mask)
    out = {"settings": dataclasses.asdict(result.settings), "window_box_px": result.window_box,
           "centres": int(len(result.centres_px)), "seconds": round(result.seconds, 3), "voxels": int(values.size)}
    if values.size:
        counts, edges = np.histogram(values, bins=bins)
        out |= {"median_angstrom": float(np.median(values)), "percentile_5_angstrom": float(np.percentile(values, 5)),
                "percentile_95_angstrom": float(np.percentile(values, 95)), "histogram_counts": counts.tolist(),
                "histogram_edges_angstrom": edges.tolist()}
    return out


def _values(volume, mask):
    inside = (np.asarray(mask) > 0.5) if mask is not None else np.ones(volume.shape, bool)
    return volume[inside & (volume > 0)]


def plot_histogram_png(path, result: LocresResult, mask=None, title: str = "") -> None:
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    values = _values(result.map_angstrom, mask)
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    if values.size:
        ax.hist(values, bins=30, color="tab:blue", alpha=0.85)
        median = float(np.median(values))
        ax.axvline(median, color="black", ls="--", lw=1, label=f"median {median:.2f} Å")
        ax.legend(fontsize=8)
    ax.set_xlabel("local resolution (Å)")
    ax.set_ylabel("voxels in the mask")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plots.save_png(fig, path)


def plot_slices_png(path, result: LocresResult, density, mask=None, title: str = "") -> None:
    """Three orthogonal slices through the centre of the mask (or of the box): the density in grey, the
    local resolution in colour where the mask is > 0.5 (or a window reached)."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    volume = result.map_angstrom
    n = volume.shape[0]
    shown = (np.asarray(mask) > 0.5) if mask is not None else (volume > 0)
    shown = shown & (volume > 0)
    if shown.any():
        centre = [int(round(c)) for c in scipy.ndimage.center_of_mass(shown)]
        values = volume[shown]
        low, high = np.percentile(values, 2), np.percentile(values, 98)
    else:
        centre, low, high = [n // 2] * 3, 0.0, 1.0
    high = max(high, low + 1e-3)
    d = np.asarray(density, dtype=np.float64)
    grey_low, grey_high = np.percentile(d, 1), np.percentile(d, 99.9)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), dpi=110, layout="constrained")
    cuts = [("z", (centre[0], slice(None), slice(None)), "x", "y"), ("y", (slice(None), centre[1], slice(None)), "x", "z"),
            ("x", (slice(None), slice(None), centre[2]), "y", "z")]
    image = None
    for ax, (axis, cut, xlabel, ylabel) in zip(axes, cuts):
        ax.imshow(d[cut], cmap="gray", vmin=grey_low, vmax=grey_high, origin="lower")
        colour = np.ma.masked_where(~shown[cut], volume[cut])
        image = ax.imshow(colour, cmap="jet_r", vmin=low, vmax=high, alpha=0.6, origin="lower")
        ax.set_title(f"{axis} = {cut[{'z': 0, 'y': 1, 'x': 2}[axis]] - n // 2:+d} px", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="local resolution (Å)")
    fig.suptitle(title, fontsize=10)
    plots.save_png(fig, path)


OUTPUT_NAMES = {"map": "locres.mrc", "json": "locres.json", "histogram_png": "locres_histogram.png", "slices_png": "locres_slices.png"}


def write_outputs(folder, result: LocresResult, density, voxel_size_angstrom: float, mask=None, title: str = "") -> dict:
    """locres.mrc, locres.json (`summary`), locres_histogram.png and locres_slices.png in ``folder``."""
    import json
    from pathlib import Path

    from lorefine_mpi.io import mrc
    from lorefine_mpi.io.star import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name for kind, name in OUTPUT_NAMES.items()}
    mrc.write_map(paths["map"], result.map_angstrom, voxel_size_angstrom)
    atomic_write_text(paths["json"], json.dumps(summary(result, mask), indent=1))
    plot_histogram_png(paths["histogram_png"], result, mask, title)
    plot_slices_png(paths["slices_png"], result, density, mask, title)
    return paths
