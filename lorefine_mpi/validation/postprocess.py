"""Post-processing of two half maps, as ``relion_postprocess`` does it: masked gold-standard FSC with the
phase-randomisation correction (`validation.fsc`), resolution at FSC 0.143, B-factor from the Guinier
plot, and the sharpened, FSC-weighted, low-passed map.

Steps (RELION 3.1's Postprocessing::run and sharpenMap; tests compare with its output):
    1. FSC_true of the half maps in the mask (`fsc.fsc`); the resolution is the last shell before it
       first falls below 0.143. Unless ``force_mask``, when the unmasked FSC reaches a higher shell than
       FSC_true, the mask is not used (RELION: "the unmasked FSC extends beyond the solvent-corrected
       FSC") and a warning says so.
    2. The average of the halves, in Fourier space, weighted per shell by ``sqrt(2 F / (1 + F))`` with
       F = FSC_true (Rosenthal & Henderson 2003), up to the last shell before FSC_true first drops below
       1e-4 and zero beyond.
    3. Guinier plot: ``ln`` of the mean amplitude of each shell's stored coefficients against
       ``s² = (i / (N · voxel))²`` (1/Å²), up to Nyquist. ``bfactor = "auto"``: B = 4 × the slope of a
       least-squares line through the FSC-weighted plot between ``fit_lowres_angstrom`` (10 Å, RELION's
       --autob_lowres) and ``fit_highres_angstrom`` (RELION's --autob_highres): by default (None) the resolution,
       so that only shells with signal set the slope; 0 is relion_postprocess's own default, up to where the FSC
       weighting ends, where shells past the resolution with a small, noisy FSC (one random phase randomisation)
       can set the slope (RELION 3.1.3's B moved by a factor of 2 or more between seeds on one pair of half maps,
       docs/relion.md). With fewer than ``MIN_FIT_SHELLS`` shells in the range the B-factor is not estimated
       from the data: none is applied (B = 0, source "not estimated") and a warning says so; or a given B
       (Å², negative sharpens).
    4. The weighted spectrum times ``exp(−B s² / 4)`` up to Nyquist (zero beyond), low-passed at the
       resolution (or ``lowpass_angstrom``) with a raised-cosine edge one shell either side (RELION's
       --low_pass with --filter_edge_width 2), back to real space: the sharpened map; times the mask:
       the masked sharpened map.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from lorefine_mpi.validation import fsc as fsc_mod

FIT_LOWRES_ANGSTROM = 10.0  # RELION's --autob_lowres
FIT_HIGHRES_ANGSTROM = None  # the high end of the fit: the resolution (RELION's --autob_highres; its 0: where the weighting ends)
MIN_FIT_SHELLS = 5  # fewer shells between 10 Å and the high end: the B-factor is not estimated from the data
WEIGHT_FLOOR_FSC = 1e-4  # RELION: the FSC weighting stops where FSC_true first drops below this
PHASE_RANDOMISED_WARNING = 0.1


@dataclasses.dataclass
class GuinierPlot:
    """Per shell 1 … N/2: s2_inv_angstrom2 (1/Å²) and ln mean amplitude (NaN where the shell is empty)
    of the input average, after FSC weighting, and after sharpening; and the fitted line."""

    s2_inv_angstrom2: np.ndarray
    ln_amplitude: np.ndarray
    ln_amplitude_weighted: np.ndarray
    ln_amplitude_sharpened: np.ndarray
    fit_slope: float | None = None
    fit_intercept: float | None = None
    fit_correlation: float | None = None
    fit_range_angstrom: tuple[float, float] | None = None  # as asked (low, high); high 0 = up to where the weighting ends
    fit_points: int = 0
    fit_s2_range: tuple[float, float] | None = None  # s² of the first and last shell used


@dataclasses.dataclass
class PostprocessResult:
    fsc: fsc_mod.FSCResult  # the masked, corrected FSC (all its curves)
    resolution_angstrom: float  # RELION's: the last shell before FSC 0.143 (FSC_true, or unmasked if the mask was skipped)
    resolution_shell: int
    resolution_interpolated_angstrom: float  # the crossing of 0.143, interpolated between shells
    bfactor_angstrom2: float
    bfactor_source: str  # "auto" (Guinier fit), "given", or "not estimated" (too few shells for a fit: none applied)
    lowpass_angstrom: float
    guinier: GuinierPlot
    sharpened: np.ndarray  # (N, N, N) float32
    sharpened_masked: np.ndarray | None
    voxel_size_angstrom: float
    mask_used: bool = True
    warnings: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        g = self.guinier
        nan_to_none = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {
            "resolution_angstrom": self.resolution_angstrom,
            "resolution_shell": self.resolution_shell,
            "resolution_interpolated_angstrom": self.resolution_interpolated_angstrom,
            "bfactor_angstrom2": self.bfactor_angstrom2,
            "bfactor_source": self.bfactor_source,
            "lowpass_angstrom": self.lowpass_angstrom,
            "voxel_size_angstrom": self.voxel_size_angstrom,
            "mask_used": self.mask_used,
            "randomise_from_shell": self.fsc.randomise_from_shell,
            "randomise_from_angstrom": (None if self.fsc.randomise_from_shell is None else
                                        float(1.0 / self.fsc.spatial_frequency_inv_angstrom[self.fsc.randomise_from_shell])),
            "warnings": list(self.warnings),
            "guinier": {
                "s2_inv_angstrom2": g.s2_inv_angstrom2.tolist(),
                "ln_amplitude": nan_to_none(g.ln_amplitude),
                "ln_amplitude_weighted": nan_to_none(g.ln_amplitude_weighted),
                "ln_amplitude_sharpened": nan_to_none(g.ln_amplitude_sharpened),
                "fit_slope": g.fit_slope, "fit_intercept": g.fit_intercept, "fit_correlation": g.fit_correlation,
                "fit_range_angstrom": list(g.fit_range_angstrom) if g.fit_range_angstrom else None,
                "fit_points": g.fit_points, "fit_s2_range_inv_angstrom2": list(g.fit_s2_range) if g.fit_s2_range else None,
            },
            "fsc": self.fsc.to_dict(),
        }


def guinier_values(ft, shells, n: int, counts=None) -> np.ndarray:
    """ln(mean |F|) per shell 0 … N/2 over the stored coefficients of ``ft``; NaN where it is zero. counts: the
    coefficients per shell (`shell_counts`), when already known."""
    m = n // 2 + 1
    total = fsc_mod.shell_sums(np.abs(ft), shells, m)
    count = shell_counts(shells, n) if counts is None else counts
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, np.log(total / np.maximum(count, 1)), np.nan)


def shell_counts(shells, n: int) -> np.ndarray:
    """The stored coefficients per shell 0 … N/2 (float64)."""
    return np.bincount(shells.ravel(), minlength=n // 2 + 1)[: n // 2 + 1].astype(np.float64)


def fsc_weights(fsc_true) -> np.ndarray:
    """Per-shell weights ``sqrt(2F / (1 + F))`` up to the last shell before F first drops below 1e-4,
    zero for F ≤ 0 and beyond (RELION's applyFscWeighting)."""
    f = np.asarray(fsc_true, dtype=np.float64)
    below = np.nonzero(f < WEIGHT_FLOOR_FSC)[0]
    last = (int(below[0]) - 1) if len(below) else len(f) - 1
    weights = np.zeros_like(f)
    keep = np.arange(len(f)) <= last
    positive = keep & (f > 0)
    weights[positive] = np.sqrt(2 * f[positive] / (1 + f[positive]))
    return weights


def fsc_weighted(ft, fsc_true, shells, n: int, in_place: bool = False) -> np.ndarray:
    """``ft`` (an (N, N, N//2+1) spectrum, its shell indices ``shells``) times `fsc_weights` per shell, zero beyond
    Nyquist: relion_postprocess's FSC weighting. in_place: ``ft`` itself is multiplied (the same numbers)."""
    factor = np.append(fsc_weights(fsc_true), 0.0)[np.minimum(shells, n // 2 + 1)]
    return np.multiply(ft, factor, out=ft if in_place else None)


def fit_bfactor(s2, ln_amplitude, lowres_angstrom: float, highres_angstrom: float):
    """Least-squares line through the Guinier points with ``highres ≤ 1/sqrt(s²) ≤ lowres`` (finite
    values only): (B = 4 · slope, slope, intercept, correlation, number of points, (s² first, s² last));
    B = 0 with fewer than two points (RELION applies no B-factor then)."""
    s2 = np.asarray(s2, dtype=np.float64)
    y = np.asarray(ln_amplitude, dtype=np.float64)
    with np.errstate(divide="ignore"):
        res = 1.0 / np.sqrt(s2)
    use = np.isfinite(y) & (res <= lowres_angstrom + 1e-9) & (res >= highres_angstrom - 1e-9)
    if use.sum() < 2:
        return 0.0, None, None, None, int(use.sum()), None
    x, y = s2[use], y[use]
    slope, intercept = np.polyfit(x, y, 1)
    corr = float(np.corrcoef(x, y)[0, 1]) if np.std(y) > 0 else 1.0
    return float(4.0 * slope), float(slope), float(intercept), corr, int(use.sum()), (float(x.min()), float(x.max()))


def lowpass_weights(n: int, voxel_size_angstrom: float, lowpass_angstrom: float, radius) -> np.ndarray:
    """RELION's lowPassFilterMap: 1 below shell ``round(N·voxel / lowpass) − 1``, a raised cosine to
    ``+ 1``, 0 beyond. radius: |k| in voxels of each coefficient. Returns the same shape as ``radius``."""
    ires = int(np.rint(n * voxel_size_angstrom / lowpass_angstrom))
    low, high = max(0.0, ires - 1.0), ires + 1.0
    r = np.asarray(radius, dtype=np.float64)
    edge = 0.5 + 0.5 * np.cos(np.pi * np.clip((r - low) / (high - low), 0.0, 1.0))
    return np.where(r < low, 1.0, np.where(r > high, 0.0, edge))


def postprocess(half1, half2, mask, voxel_size_angstrom: float, *, bfactor="auto", fit_lowres_angstrom: float = FIT_LOWRES_ANGSTROM,
                fit_highres_angstrom: float | None = FIT_HIGHRES_ANGSTROM, lowpass_angstrom: float | None = None, force_mask: bool = False,
                seed: int = 0, randomise_from_angstrom: float | None = None) -> PostprocessResult:
    """Post-process two half maps (N, N, N) float with a soft mask (N, N, N) in [0, 1] (module docstring).

    bfactor: "auto" or a number (Å², negative sharpens). fit_highres_angstrom: the Guinier fit's
    high-resolution end in Å (None, the default: the resolution; 0: where the FSC weighting ends, as
    relion_postprocess by default). lowpass_angstrom: default the resolution.
    """
    n = np.shape(half1)[0]
    warnings = []
    curve = fsc_mod.fsc(half1, half2, voxel_size_angstrom, mask=mask, seed=seed, randomise_from_angstrom=randomise_from_angstrom)
    shell, resolution = fsc_mod.resolution_shell_at(curve, 0.143)
    fsc_true = curve.fsc
    mask_used = True
    unmasked_shell, unmasked_resolution = fsc_mod.resolution_shell_at(fsc_mod.FSCResult(curve.spatial_frequency_inv_angstrom, curve.fsc_unmasked), 0.143)
    if unmasked_shell > shell:
        if force_mask:
            warnings.append("the unmasked FSC extends beyond the mask-corrected FSC (mask kept: force_mask)")
        else:
            warnings.append("the unmasked FSC extends beyond the mask-corrected FSC: the mask is not used (as relion_postprocess; "
                            "check the mask, or force it)")
            fsc_true, shell, resolution, mask_used = curve.fsc_unmasked, unmasked_shell, unmasked_resolution, False
    elif curve.randomise_from_shell is not None and curve.fsc_phase_randomised[shell] > PHASE_RANDOMISED_WARNING:
        warnings.append(f"the phase-randomised FSC is {curve.fsc_phase_randomised[shell]:.2f} (> 0.1) at the resolution; "
                        "a softer mask would give a more reliable estimate")
    interpolated = fsc_mod.resolution_at(fsc_mod.FSCResult(curve.spatial_frequency_inv_angstrom, fsc_true), 0.143)

    shells = fsc_mod.shell_index(n)
    counts = shell_counts(shells, n)
    average = np.add(half1, half2, dtype=np.float64)
    average *= 0.5
    ft = np.fft.rfftn(average)
    del average
    ln_in = guinier_values(ft, shells, n, counts)
    fsc_weighted(ft, fsc_true, shells, n, in_place=True)
    ln_weighted = guinier_values(ft, shells, n, counts)
    m = n // 2 + 1
    s2 = (np.arange(m) / (n * voxel_size_angstrom)) ** 2
    fit = (None, None, None, 0, None)
    highres = resolution if fit_highres_angstrom is None else float(fit_highres_angstrom)
    if bfactor == "auto":
        b, slope, intercept, corr, points, s2_range = fit_bfactor(s2[1:], ln_weighted[1:], fit_lowres_angstrom, highres)
        fit = (slope, intercept, corr, points, s2_range)
        source = "auto"
        if points < MIN_FIT_SHELLS:
            up_to = f"{highres:.2f} Å" if highres > 0 else "where the FSC weighting ends"
            warnings.append(f"B-factor not estimated from the data: {points} Fourier shell{'s' if points != 1 else ''} between "
                            f"{fit_lowres_angstrom:g} Å and {up_to}, at least {MIN_FIT_SHELLS} needed for the Guinier fit; "
                            "no B-factor applied (give one: postprocess.bfactor, or --bfactor)")
            b, fit, source = 0.0, (None, None, None, points, None), "not estimated"
    else:
        b, source = float(bfactor), "given"
    lowpass = resolution if lowpass_angstrom is None else float(lowpass_angstrom)
    for z in range(len(ft)):  # the B-factor, then the low-pass, a plane at a time (the same numbers as on the volume)
        radius = np.sqrt(fsc_mod.frequency_radius_sq_plane(n, z))
        s2_voxel = (radius / (n * voxel_size_angstrom)) ** 2
        ft[z] *= np.where(radius <= n / 2, np.exp(-(b / 4.0) * s2_voxel), 0.0)
    ln_sharpened = guinier_values(ft, shells, n, counts)
    del shells
    if np.isfinite(lowpass):
        for z in range(len(ft)):
            ft[z] *= lowpass_weights(n, voxel_size_angstrom, lowpass, np.sqrt(fsc_mod.frequency_radius_sq_plane(n, z)))
    sharpened = np.fft.irfftn(ft, s=(n, n, n), axes=(0, 1, 2)).astype(np.float32)
    del ft
    guinier = GuinierPlot(s2[1:], ln_in[1:], ln_weighted[1:], ln_sharpened[1:], fit[0], fit[1], fit[2],
                          (fit_lowres_angstrom, highres) if bfactor == "auto" else None, fit[3], fit[4])
    masked = None if mask is None else (sharpened * np.asarray(mask, dtype=np.float32))
    return PostprocessResult(curve, float(resolution), int(shell), float(interpolated), float(b), source, float(lowpass), guinier,
                             sharpened, masked, float(voxel_size_angstrom), mask_used, warnings)


# -- outputs ---------------------------------------------------------------------------------------
def plot_guinier_png(path, result: PostprocessResult, title: str = "") -> None:
    """The Guinier plot: input, FSC-weighted and sharpened ln amplitudes against s², and the fitted line."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    g = result.guinier
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.plot(g.s2_inv_angstrom2, g.ln_amplitude, color="black", lw=1, label="average of the half maps")
    ax.plot(g.s2_inv_angstrom2, g.ln_amplitude_weighted, color="tab:blue", lw=1, label="FSC-weighted")
    ax.plot(g.s2_inv_angstrom2, g.ln_amplitude_sharpened, color="tab:red", lw=1,
            label=f"sharpened (B = {result.bfactor_angstrom2:.0f} Å², {result.bfactor_source})")
    if g.fit_slope is not None:
        x = np.array(g.fit_s2_range)
        ax.plot(x, g.fit_intercept + g.fit_slope * x, color="tab:orange", lw=2, ls="--",
                label=f"fit {1 / np.sqrt(x[0]):.1f}–{1 / np.sqrt(x[1]):.1f} Å ({g.fit_points} shells, r = {g.fit_correlation:.3f})")
    ax.set_xlabel("s² (1/Å²)")
    ax.set_ylabel("ln(mean amplitude)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_png(fig, path)


def output_names(prefix: str = "postprocess") -> dict:
    """{kind: file name} of what `write_outputs` may write (the masked map only when the mask was used)."""
    return {"map": f"{prefix}.mrc", "masked_map": f"{prefix}_masked.mrc", "json": f"{prefix}.json", "fsc_png": f"{prefix}_fsc.png",
            "guinier_png": f"{prefix}_guinier.png"}


def write_outputs(folder, result: PostprocessResult, title: str = "", prefix: str = "postprocess") -> dict:
    """Write PREFIX.mrc (sharpened), PREFIX_masked.mrc, PREFIX.json, PREFIX_fsc.png and PREFIX_guinier.png
    into ``folder`` (each written to a temporary name, then renamed). Returns {kind: path}."""
    from lorefine_mpi.io import mrc
    from lorefine_mpi.io.star import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = output_names(prefix)
    paths = {kind: folder / names[kind] for kind in ("map", "json", "fsc_png", "guinier_png")}
    mrc.write_map(paths["map"], result.sharpened, result.voxel_size_angstrom)
    if result.sharpened_masked is not None:
        paths["masked_map"] = folder / names["masked_map"]
        mrc.write_map(paths["masked_map"], result.sharpened_masked, result.voxel_size_angstrom)
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=1))
    fsc_mod.plot_fsc_png(paths["fsc_png"], {"corrected, masked": result.fsc}, title or f"resolution {result.resolution_angstrom:.2f} Å", details=True)
    plot_guinier_png(paths["guinier_png"], result, title)
    return paths


def write_relion_star(path, result: PostprocessResult, *, half1: str, half2: str, mask: str, command: str = "") -> Path:
    """``postprocess.star`` in relion_postprocess's layout (RELION 3.1: `io.relion_job.write_postprocess_star`), so that
    RELION's programs that take a post-processing job (CTF refinement, polishing, relion_star_handler …) read this one.
    half1, half2, mask: the file names as RELION should read them (relative to its project directory)."""
    from lorefine_mpi.io import relion_job

    f, g = result.fsc, result.guinier
    shells = np.arange(len(f.fsc))
    n = 2 * (len(f.fsc) - 1)
    with np.errstate(divide="ignore"):
        angstrom = np.where(shells > 0, n * result.voxel_size_angstrom / np.maximum(shells, 1), 999.0)
    general = {"rlnFinalResolution": result.resolution_angstrom, "rlnBfactorUsedForSharpening": result.bfactor_angstrom2,
               "rlnUnfilteredMapHalf1": half1, "rlnUnfilteredMapHalf2": half2}
    fsc = {"rlnSpectralIndex": shells, "rlnResolution": 1.0 / angstrom, "rlnAngstromResolution": angstrom}
    if result.mask_used and f.fsc_unmasked is not None:
        general["rlnMaskName"] = mask
        if f.randomise_from_shell is not None:
            general["rlnRandomiseFrom"] = n * result.voxel_size_angstrom / f.randomise_from_shell
        fsc |= {"rlnFourierShellCorrelationCorrected": f.fsc, "rlnFourierShellCorrelationUnmaskedMaps": f.fsc_unmasked,
                "rlnFourierShellCorrelationMaskedMaps": f.fsc_masked,
                "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": f.fsc_phase_randomised}
    else:
        fsc["rlnFourierShellCorrelationUnmaskedMaps"] = f.fsc if f.fsc_unmasked is None else f.fsc_unmasked
    if g.fit_slope is not None:
        general |= {"rlnFittedSlopeGuinierPlot": g.fit_slope, "rlnFittedInterceptGuinierPlot": g.fit_intercept,
                    "rlnCorrelationFitGuinierPlot": g.fit_correlation}
    guinier = {"rlnResolutionSquared": g.s2_inv_angstrom2, "rlnLogAmplitudesOriginal": g.ln_amplitude,
               "rlnLogAmplitudesWeighted": g.ln_amplitude_weighted, "rlnLogAmplitudesSharpened": g.ln_amplitude_sharpened}
    if g.fit_intercept is not None:
        guinier["rlnLogAmplitudesIntercept"] = np.full(len(g.s2_inv_angstrom2), g.fit_intercept)
    comment = f"lorefine postprocess ({result.bfactor_source} B-factor); {command}".rstrip("; ")
    return relion_job.write_postprocess_star(path, comment=comment, general=general, fsc=fsc, guinier=guinier)
