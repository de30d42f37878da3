"""RELION's contrast transfer function, in lorefine's rfft2 layout.

    λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))   Å, V in volts (relativistic)
    Δf(α) = (ΔU + ΔV)/2 + (ΔU − ΔV)/2 · cos(2 (α − α_ast))   Å, positive = underfocus
    χ(k) = −π λ Δf k² + (π/2) Cs λ³ k⁴ − φ − atan(Q0 / sqrt(1 − Q0²))
    CTF(k) = −sin χ · exp(−B k² / 4) · scale

k in 1/Å, α the azimuth of k in the image (atan2(ky, kx)), Cs in Å, φ the phase shift. At k = 0 the
CTF is +Q0 (positive contrast), as in RELION's CTF::getCTF. Pinned against relion_project images in
tests/unit/test_projector.py.
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.kernels import backend
from lorefine_mpi.projection.fourier import image_frequencies


def ctf_2d(
    box_px,
    pixel_size_angstrom,
    defocus_u_angstrom,
    defocus_v_angstrom,
    defocus_angle_rad,
    voltage_kv,
    cs_mm,
    amplitude_contrast,
    phase_shift_rad=0.0,
    bfactor_angstrom2=0.0,
    scale=1.0,
    pixels=None,
) -> np.ndarray:
    """CTFs of n particles: (n, N, N//2+1) float32 in lorefine's rfft2 layout (the formula above, computed by the
    array back-end, `kernels.Backend.ctf`); with ``pixels`` ((M,) indices into the flattened (N, N//2+1) grid, e.g. a
    search band's), (n, M) at those pixels only: the same numbers as the whole grid's there, at a fraction of the cost.

    Every parameter is a scalar or an (n,) array (per particle): pixel size Å, defocus U/V Å, astigmatism
    angle rad, voltage kV, Cs mm, amplitude contrast Q0 (fraction), phase shift rad, B-factor Å², scale.
    """
    params = np.broadcast_arrays(
        *(
            np.atleast_1d(np.asarray(v, dtype=np.float64))
            for v in (
                pixel_size_angstrom,
                defocus_u_angstrom,
                defocus_v_angstrom,
                defocus_angle_rad,
                voltage_kv,
                cs_mm,
                amplitude_contrast,
                phase_shift_rad,
                bfactor_angstrom2,
                scale,
            )
        )
    )
    kx, ky = image_frequencies(int(box_px))
    if pixels is None:
        return backend().ctf(kx, ky, *(p[:, None, None] for p in params))
    return backend().ctf(kx.reshape(-1)[pixels], ky.reshape(-1)[pixels], *(p[:, None] for p in params), box=int(box_px))


def ctf_for_table(table, indices, box_px, extra_angle_rad=0.0, pixels=None) -> np.ndarray:
    """CTFs (k, N, N//2+1) float32 of the particles ``indices`` of a ParticleTable ((k, M) at ``pixels``: `ctf_2d`).

    extra_angle_rad: scalar or (k,), added to each astigmatism angle (used when images are turned).
    """
    idx = np.asarray(indices)
    groups = table.optics
    og = table.optics_group[idx]
    return ctf_2d(
        box_px,
        np.array([groups[int(g)].pixel_size_angstrom for g in og]),
        table.defocus_u_angstrom[idx],
        table.defocus_v_angstrom[idx],
        table.defocus_angle_rad[idx] + extra_angle_rad,
        np.array([groups[int(g)].voltage_kv for g in og]),
        np.array([groups[int(g)].cs_mm for g in og]),
        np.array([groups[int(g)].amplitude_contrast for g in og]),
        table.phase_shift_rad[idx],
        table.ctf_bfactor_angstrom2[idx],
        table.ctf_scale[idx],
        pixels=pixels,
    )
