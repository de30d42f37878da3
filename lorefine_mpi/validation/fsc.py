"""Fourier shell correlation, resolution at a threshold, and the masked FSC of Chen et al. (2013).

Shells are one Fourier voxel thick: shell i holds the frequencies with ``round(|k|) = i`` (k in
voxels), i = 0 … N/2 (Nyquist); shell i stands for spatial frequency ``i / (N · voxel)`` 1/Å.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from lorefine_mpi.projection import fourier


@dataclasses.dataclass
class FSCResult:
    """spatial_frequency_inv_angstrom, fsc: (m,) per shell; for a masked FSC also fsc_unmasked,
    fsc_phase_randomised and the shell from which phases were randomised."""

    spatial_frequency_inv_angstrom: np.ndarray
    fsc: np.ndarray
    fsc_unmasked: np.ndarray | None = None
    fsc_phase_randomised: np.ndarray | None = None
    randomise_from_shell: int | None = None

    @property
    def resolution_angstrom(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return 1.0 / self.spatial_frequency_inv_angstrom

    def to_dict(self) -> dict:
        out = {
            "spatial_frequency_inv_angstrom": self.spatial_frequency_inv_angstrom.tolist(),
            "fsc": self.fsc.tolist(),
            "resolution_fsc_0.5_angstrom": resolution_at(self, 0.5),
            "resolution_fsc_0.143_angstrom": resolution_at(self, 0.143),
        }
        if self.fsc_unmasked is not None:
            out["fsc_unmasked"] = self.fsc_unmasked.tolist()
            out["fsc_phase_randomised"] = self.fsc_phase_randomised.tolist()
            out["randomise_from_shell"] = self.randomise_from_shell
        return out


def _shells(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n) * n
    kr = np.arange(n // 2 + 1)
    kz, ky, kx = np.meshgrid(k, k, kr, indexing="ij")
    return np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(np.int64)


def _curve(ft1, ft2, shells, n_shells):
    s = shells.ravel()
    w = np.broadcast_to(fourier.half_axis_multiplicity(shells.shape[0]), shells.shape).ravel()
    cross = np.bincount(s, (w * (ft1 * np.conj(ft2)).real.ravel()), minlength=n_shells)[:n_shells]
    p1 = np.bincount(s, (w * np.abs(ft1.ravel()) ** 2), minlength=n_shells)[:n_shells]
    p2 = np.bincount(s, (w * np.abs(ft2.ravel()) ** 2), minlength=n_shells)[:n_shells]
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(p1 * p2 > 0, cross / np.sqrt(p1 * p2), 0.0)
    return curve


def fsc(map1, map2, voxel_size_angstrom: float, mask=None, seed: int = 0) -> FSCResult:
    """FSC of two (N, N, N) maps. With a mask: the phase-randomisation-corrected masked FSC
    (Chen et al. 2013, as RELION's postprocess): phases of both maps are randomised beyond the shell
    where the unmasked FSC first drops below 0.8, and ``FSC = (FSC_t − FSC_n) / (1 − FSC_n)`` from there."""
    a = np.asarray(map1, dtype=np.float64)
    b = np.asarray(map2, dtype=np.float64)
    n = a.shape[0]
    shells = _shells(n)
    m = n // 2 + 1
    freq = np.arange(m) / (n * voxel_size_angstrom)
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    unmasked = _curve(fa, fb, shells, m)
    if mask is None:
        return FSCResult(freq, unmasked)
    mk = np.asarray(mask, dtype=np.float64)
    masked = _curve(np.fft.rfftn(a * mk), np.fft.rfftn(b * mk), shells, m)
    below = np.nonzero(unmasked < 0.8)[0]
    start = int(below[0]) if len(below) else m
    rng = np.random.default_rng(seed)
    beyond = shells >= start
    phases = np.exp(2j * np.pi * rng.random(shells.shape))
    ra = np.where(beyond, np.abs(fa) * phases, fa)
    phases = np.exp(2j * np.pi * rng.random(shells.shape))
    rb = np.where(beyond, np.abs(fb) * phases, fb)
    randomised = _curve(np.fft.rfftn(np.fft.irfftn(ra, s=a.shape, axes=(0, 1, 2)) * mk), np.fft.rfftn(np.fft.irfftn(rb, s=a.shape, axes=(0, 1, 2)) * mk), shells, m)
    corrected = masked.copy()
    tail = np.arange(m) >= start
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected[tail] = np.where(randomised[tail] < 1, (masked[tail] - randomised[tail]) / (1 - randomised[tail]), 0.0)
    return FSCResult(freq, corrected, unmasked, randomised, start)


def resolution_at(result: FSCResult, threshold: float) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold``, interpolated linearly in spatial
    frequency between the two shells around the crossing; Nyquist when it never falls below."""
    f, c = result.spatial_frequency_inv_angstrom, result.fsc
    below = np.nonzero(c[1:] < threshold)[0]
    if not len(below):
        return float(1.0 / f[-1])
    i = below[0] + 1
    f0, f1, c0, c1 = f[i - 1], f[i], c[i - 1], c[i]
    crossing = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
    return float(1.0 / crossing) if crossing > 0 else float("inf")


def write_fsc_json(path, curves: dict) -> None:
    """Write {label: FSCResult} as JSON (temporary name, then rename)."""
    from lorefine_mpi.io.star import atomic_write_text

    atomic_write_text(path, json.dumps({k: v.to_dict() for k, v in curves.items()}, indent=1))


def plot_fsc_png(path, curves: dict, title: str = "") -> None:
    """A PNG of {label: FSCResult} with the 0.5 and 0.143 thresholds and a resolution (Å) top axis."""
    import os
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, result in curves.items():
        r05 = resolution_at(result, 0.5)
        ax.plot(result.spatial_frequency_inv_angstrom, result.fsc, label=f"{label} (0.5: {r05:.1f} Å)")
    for threshold in (0.5, 0.143):
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    low, high = ax.get_xlim()
    top = ax.twiny()
    top.set_xlim(low, high)
    marks = [r for r in (100, 50, 30, 20, 15, 12, 10, 8, 6, 5, 4, 3, 2.5, 2) if low < 1 / r < high]
    top.set_xticks([1 / r for r in marks])
    top.set_xticklabels([f"{r:g}" for r in marks])
    top.set_xlabel("resolution (Å)")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".fsc.", suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
