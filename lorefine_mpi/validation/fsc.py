"""Fourier shell correlation, resolution at a threshold, and the masked FSC of Chen et al. (2013),
computed as RELION 3.1's ``relion_postprocess`` computes them (tests compare the curves with its output).

Shells are one Fourier voxel thick: shell i holds the frequencies with ``round(|k|) = i`` (k in
voxels), i = 0 … N/2 (Nyquist); shell i stands for spatial frequency ``i / (N · voxel)`` 1/Å.
Sums run over the half spectrum that ``rfftn`` returns, each stored coefficient counted once (RELION's
``getFSC``: the kx = 0 plane holds both k and −k, the other planes only one of each pair).

The masked FSC with phase randomisation (``fsc(..., mask=M)``), step by step as RELION does it:
    1. FSC of the unmasked maps; ``randomise_from`` = the first shell i > 0 where it is below 0.8
       (or a given resolution);
    2. FSC of the masked maps, FSC_t;
    3. phases of both unmasked maps replaced by uniform random ones for every coefficient with
       ``|k|² ≥ randomise_from²`` (amplitudes kept; one random stream, half 1 then half 2), the maps
       masked, their FSC: FSC_n;
    4. FSC_true = FSC_t below shell ``randomise_from + 2`` and ``(FSC_t − FSC_n) / (1 − FSC_n)`` from
       there (RELION moved the correction two shells up, away from the artefacts of the sharp edge of
       the randomisation).
    When the unmasked FSC never falls below 0.8 (noise-free maps), nothing is randomised and FSC_true =
    FSC_t (``relion_postprocess`` stops with an error there). Shell 0 is set to 1 where it is undefined
    or not positive (a masked map's DC term), as RELION does.

Resolution: RELION's convention is the last shell, scanning from 0, before the curve first falls below
the threshold (`resolution_shell_at`; what ``relion_postprocess`` prints); `resolution_at` also
interpolates the crossing linearly between that shell and the next.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

RANDOMISE_BELOW_FSC = 0.8  # RELION's --randomize_at_fsc
CORRECTION_OFFSET_SHELLS = 2  # RELION corrects from randomise_from + 2


@dataclasses.dataclass
class FSCResult:
    """spatial_frequency_inv_angstrom, fsc: (m,) per shell, m = N/2 + 1. For a masked FSC, ``fsc`` is
    the corrected curve (FSC_true) and fsc_unmasked, fsc_masked (FSC_t), fsc_phase_randomised (FSC_n)
    and randomise_from_shell (None when nothing was randomised) are set."""

    spatial_frequency_inv_angstrom: np.ndarray
    fsc: np.ndarray
    fsc_unmasked: np.ndarray | None = None
    fsc_phase_randomised: np.ndarray | None = None
    randomise_from_shell: int | None = None
    fsc_masked: np.ndarray | None = None

    @property
    def resolution_angstrom(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return 1.0 / self.spatial_frequency_inv_angstrom

    def to_dict(self) -> dict:
        out = {"spatial_frequency_inv_angstrom": self.spatial_frequency_inv_angstrom.tolist(), "fsc": self.fsc.tolist()}
        for threshold in (0.5, 0.143):
            out[f"resolution_fsc_{threshold:g}_angstrom"] = _finite(resolution_shell_at(self, threshold)[1])
            out[f"resolution_fsc_{threshold:g}_interpolated_angstrom"] = _finite(resolution_at(self, threshold))
        if self.fsc_unmasked is not None:
            out["fsc_unmasked"] = self.fsc_unmasked.tolist()
            out["fsc_masked"] = self.fsc_masked.tolist()
            out["fsc_phase_randomised"] = self.fsc_phase_randomised.tolist()
            out["randomise_from_shell"] = self.randomise_from_shell
        return out


def _finite(value: float):
    return float(value) if np.isfinite(value) else None


def _axis_squares(n: int) -> tuple[np.ndarray, np.ndarray]:
    """k² of the full axes (FFT order) and of the half axis of an ``rfftn`` spectrum (k in voxels), float64."""
    return np.rint(np.fft.fftfreq(n) * n) ** 2, np.arange(n // 2 + 1, dtype=np.float64) ** 2


def frequency_radius_sq(n: int) -> np.ndarray:
    """(n, n, n//2+1) int64: kx² + ky² + kz² of each ``rfftn`` coefficient (k in voxels, FFT order)."""
    k2, half = _axis_squares(n)
    return (k2[:, None, None] + k2[None, :, None] + half[None, None, :]).astype(np.int64)


def frequency_radius_sq_plane(n: int, z: int) -> np.ndarray:
    """Plane z (n, n//2+1) of `frequency_radius_sq`."""
    k2, half = _axis_squares(n)
    return (k2[z] + k2[:, None] + half[None, :]).astype(np.int64)


def shell_index(n: int) -> np.ndarray:
    """(n, n, n//2+1) int64: the shell ``round(|k|)`` of each ``rfftn`` coefficient."""
    return np.rint(np.sqrt(frequency_radius_sq(n))).astype(np.int64)


def shell_sums(values, shells, n_shells: int) -> np.ndarray:
    """Sum of ``values`` (any shape matching ``shells``, real) per shell 0 … n_shells − 1 (others dropped). The shells
    beyond are counted into bins of their own and cut off, so no copy of the kept values is made (the same sums)."""
    s = shells.ravel()
    return np.bincount(s, np.asarray(values).ravel(), minlength=n_shells)[:n_shells]


def fsc_curve(ft1, ft2, shells, n_shells: int) -> np.ndarray:
    """RELION's getFSC: ``Σ Re(F1* F2) / sqrt(Σ|F1|² Σ|F2|²)`` per shell over the stored half spectrum.
    ft1, ft2: ``rfftn`` spectra (N, N, N//2+1) complex; shells: `shell_index`. Returns (n_shells,).
    Each sum's terms are computed a plane at a time into one real buffer (no complex temporaries of the volume)."""
    terms = np.empty(np.shape(ft1), dtype=np.float64)

    def summed(term):
        for z in range(len(terms)):
            terms[z] = term(ft1[z], ft2[z])
        return shell_sums(terms, shells, n_shells)

    cross = summed(lambda a, b: (np.conj(a) * b).real)
    p1 = summed(lambda a, b: np.abs(a) ** 2)
    p2 = summed(lambda a, b: np.abs(b) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(p1 * p2 > 0, cross / np.sqrt(p1 * p2), 0.0)
    if not curve[0] > 0:  # the DC term of masked or zero-mean maps
        curve[0] = 1.0
    return curve


def spectrum(volume, mask=None) -> np.ndarray:
    """``rfftn`` (complex128) of ``volume`` in double precision, times ``mask`` when given: the only double-precision
    copy of the volume is the transform's own input, freed with it."""
    v = np.asarray(volume, dtype=np.float64)
    return np.fft.rfftn(v if mask is None else np.multiply(v, mask, dtype=np.float64))


def randomise_phases_beyond(volume, shell: int, rng) -> np.ndarray:
    """``volume`` (N, N, N) with the phase of every coefficient with ``|k|² ≥ shell²`` replaced by a
    uniform random one (RELION's randomizePhasesBeyond). rng: numpy Generator, drawn a plane at a time in the order of
    one draw of the whole spectrum (the same numbers). Returns float64."""
    n = np.shape(volume)[0]
    ft = spectrum(volume)
    beyond = frequency_radius_sq(n) >= shell * shell
    for z in range(len(ft)):  # a plane at a time: the same numbers without volumes of temporaries
        phases = rng.random(ft.shape[1:])
        ft[z] = np.where(beyond[z], np.abs(ft[z]) * np.exp(2j * np.pi * phases), ft[z])
    del beyond
    return np.fft.irfftn(ft, s=(n, n, n), axes=(0, 1, 2))


def first_shell_below(curve, threshold: float) -> int | None:
    """The first shell i > 0 where ``curve[i] < threshold``, or None."""
    below = np.nonzero(np.asarray(curve)[1:] < threshold)[0]
    return int(below[0]) + 1 if len(below) else None


def corrected_fsc(masked, randomised, randomise_from: int) -> np.ndarray:
    """RELION's calculateFSCtrue on curves (..., m) (the last axis is the shell): FSC_t below shell
    ``randomise_from + 2``, (FSC_t − FSC_n) / (1 − FSC_n) from there."""
    t = np.asarray(masked, dtype=np.float64)
    r = np.asarray(randomised, dtype=np.float64)
    tail = np.arange(t.shape[-1]) >= randomise_from + CORRECTION_OFFSET_SHELLS
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.where(r < 1, (t - r) / (1 - r), 0.0)
    return np.where(tail, corrected, t)


def fsc(map1, map2, voxel_size_angstrom: float, mask=None, seed: int = 0, randomise_from_angstrom: float | None = None) -> FSCResult:
    """FSC of two (N, N, N) maps; with a mask, the phase-randomisation-corrected masked FSC (module
    docstring). randomise_from_angstrom: randomise from this resolution instead of where the unmasked
    FSC drops below 0.8 (RELION's --randomize_at_A). seed: the phase randomisation's random stream."""
    n = np.shape(map1)[0]
    shells = shell_index(n)
    m = n // 2 + 1
    freq = np.arange(m) / (n * voxel_size_angstrom)
    unmasked = fsc_curve(spectrum(map1), spectrum(map2), shells, m)
    if mask is None:
        return FSCResult(freq, unmasked)
    masked = fsc_curve(spectrum(map1, mask), spectrum(map2, mask), shells, m)
    if randomise_from_angstrom is not None:
        start = int(n * voxel_size_angstrom / randomise_from_angstrom)
    else:
        start = first_shell_below(unmasked, RANDOMISE_BELOW_FSC)
    if start is None or start < 1 or start >= m:
        return FSCResult(freq, masked.copy(), unmasked, np.zeros(m), None, masked)
    rng = np.random.default_rng(seed)  # one stream: half 1's phases, then half 2's
    random1 = spectrum(randomise_phases_beyond(map1, start, rng), mask)
    random2 = spectrum(randomise_phases_beyond(map2, start, rng), mask)
    randomised = fsc_curve(random1, random2, shells, m)
    return FSCResult(freq, corrected_fsc(masked, randomised, start), unmasked, randomised, start, masked)


def resolution_shell_at(result: FSCResult, threshold: float) -> tuple[int, float]:
    """RELION's read-out: (shell i, its resolution in Å) of the last shell, scanning from 0, before the
    FSC first falls below ``threshold``; (0, inf) when shell 1 is already below."""
    c = np.asarray(result.fsc)
    below = np.nonzero(c < threshold)[0]
    last = int(below[0]) - 1 if len(below) else len(c) - 1
    last = max(last, 0)
    f = result.spatial_frequency_inv_angstrom[last]
    return last, (float(1.0 / f) if f > 0 else float("inf"))


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


def plot_fsc_png(path, curves: dict, title: str = "", details: bool = False) -> None:
    """A PNG of {label: FSCResult} with the 0.5 and 0.143 thresholds and a resolution (Å) top axis.
    details: also draw each masked curve's unmasked, masked and phase-randomised FSC (thin lines)."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, result in curves.items():
        _, shell_res = resolution_shell_at(result, 0.143)
        line, = ax.plot(result.spatial_frequency_inv_angstrom, result.fsc, lw=2, label=f"{label} (0.143: {shell_res:.2f} Å)")
        if details and result.fsc_unmasked is not None:
            f = result.spatial_frequency_inv_angstrom
            ax.plot(f, result.fsc_unmasked, color="tab:green", lw=0.8, label="unmasked")
            ax.plot(f, result.fsc_masked, color="tab:blue", lw=0.8, ls="--", label="masked (uncorrected)")
            if result.randomise_from_shell is not None:
                ax.plot(f, result.fsc_phase_randomised, color="tab:red", lw=0.8, label="phase-randomised, masked")
    for threshold in (0.5, 0.143):
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    plots.resolution_axis(ax)
    fig.tight_layout()
    plots.save_png(fig, path)
