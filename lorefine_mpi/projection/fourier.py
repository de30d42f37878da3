"""Central-slice projection from a zero-padded 3D Fourier transform, and the 2D Fourier helpers.

Layouts
    Fourier images: ``rfft2(ifftshift(image))``, shape ``(..., N, N//2+1)``, phase origin at the box
    centre N//2, ky in FFT order. `to_fourier` / `to_real` convert.
    Padded volume spectrum (`FourierVolume.data`): ``(P, P, P//2+1)`` complex64 with P = padding · N,
    axes ``[kz, ky, kx]``, kz and ky centred (index P//2 is frequency 0), kx = 0 … P/2; the phase origin
    is the volume's centre N//2. Frequencies in the padded grid are ``padding ×`` those of the image.

Projection (Fourier-slice theorem): the 2D spectrum of ``P_A[V]`` at (kx, ky) is the 3D spectrum at
    ``Aᵀ (kx, ky, 0)``, sampled by trilinear interpolation; samples with kx3 < 0 are read at −k and
    conjugated (Hermitian symmetry of a real volume). Trilinear interpolation multiplies the real-space
    volume by sinc²(r / P) along each axis; `prepare_volume` divides it out first (gridding
    correction, as RELION does). Origins are phase ramps: ``project(..., shifts_px=o)`` returns the
    spectrum of ``P(x + o)``, RELION's particle image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lorefine_mpi.errors import InputError


@dataclasses.dataclass(frozen=True)
class FourierVolume:
    """A volume's padded half spectrum, ready for central slices.

    data: (P, P, P//2+1) complex64, layout in the module docstring (may be a read-only view of MPI
    shared memory). box: N, the original box. padding: P / N.
    """

    data: np.ndarray
    box: int
    padding: int

    @classmethod
    def from_array(cls, data, box, padding) -> "FourierVolume":
        return cls(data, int(box), int(padding))

    @property
    def size(self) -> int:
        return self.data.shape[0]


def require_even_box(box: int, what: str = "box") -> None:
    """RELION refuses odd boxes for particles, and so does lorefine."""
    if box % 2:
        raise InputError(f"{what}: the box size must be even (RELION refuses odd boxes), got {box}")


def spectrum_shape(box: int, padding: int) -> tuple[int, int, int]:
    p = box * padding
    return (p, p, p // 2 + 1)


def prepare_volume(volume, padding: int = 2, out=None) -> FourierVolume:
    """Gridding pre-correction, zero padding, FFT: a `FourierVolume` of ``volume`` (N, N, N) float.

    out: optional preallocated ``spectrum_shape(N, padding)`` complex64 array to fill (e.g. shared memory).
    """
    v = np.asarray(volume, dtype=np.float64)
    n = v.shape[0]
    if v.shape != (n, n, n):
        raise InputError(f"volume: expected a cube, got shape {v.shape}")
    require_even_box(n, "volume")
    p = padding * n
    axis = (np.arange(n) - n // 2) / p
    correction = np.sinc(axis) ** 2
    v = v / (correction[:, None, None] * correction[None, :, None] * correction[None, None, :])
    padded = np.zeros((p, p, p))
    start = p // 2 - n // 2
    padded[start : start + n, start : start + n, start : start + n] = v
    spectrum = np.fft.rfftn(np.fft.ifftshift(padded))
    spectrum = np.fft.fftshift(spectrum, axes=(0, 1)).astype(np.complex64)
    if out is None:
        return FourierVolume(spectrum, n, padding)
    out[...] = spectrum
    return FourierVolume(out, n, padding)


def half_axis_multiplicity(n: int) -> np.ndarray:
    """(n//2+1,) float: how many coefficients of the full spectrum each index of the halved (last, rfft)
    axis stands for: 1 at k = 0 and k = n/2, 2 elsewhere (itself and its mirror). Sums over a half
    spectrum weighted by it are sums over the full spectrum (Parseval, power spectra, least squares)."""
    multiplicity = np.full(n // 2 + 1, 2.0)
    multiplicity[0] = 1.0
    if n % 2 == 0:
        multiplicity[-1] = 1.0
    return multiplicity


def image_frequencies(box: int):
    """(kx, ky) of lorefine's rfft2 layout in cycles per box: two (N, N//2+1) float arrays."""
    ky = np.fft.fftfreq(box, 1.0 / box)
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    return np.broadcast_to(kx[None, :], (box, box // 2 + 1)), np.broadcast_to(ky[:, None], (box, box // 2 + 1))


def _slice_coordinates(fvol: FourierVolume, matrices, max_radius_px):
    """Padded-grid coordinates of the central slices: (n, M, 3) float and the (M,) kept-pixel index."""
    n = fvol.box
    kx, ky = image_frequencies(n)
    radius = n // 2 if max_radius_px is None else min(max_radius_px, n // 2)
    keep = np.nonzero((kx**2 + ky**2).ravel() <= radius**2)[0]
    k2 = np.stack([kx.ravel()[keep], ky.ravel()[keep]], -1) * fvol.padding
    # Aᵀ (kx, ky, 0): the first two rows of A, transposed.
    coords = np.einsum("mi,nij->nmj", k2, np.asarray(matrices, dtype=np.float64)[:, :2, :])
    return coords, keep


def _trilinear(fvol: FourierVolume, coords):
    """Corner flat indices (…, 8), weights (…, 8) and the conjugation flag (…) for padded coordinates."""
    p = fvol.size
    conj = coords[..., 0] < 0
    c = np.where(conj[..., None], -coords, coords)
    x, y, z = c[..., 0], c[..., 1] + p // 2, c[..., 2] + p // 2
    x0, y0, z0 = np.floor(x), np.floor(y), np.floor(z)
    fx, fy, fz = x - x0, y - y0, z - z0
    x0, y0, z0 = x0.astype(np.int64), y0.astype(np.int64), z0.astype(np.int64)
    nx = p // 2 + 1
    index = []
    weight = []
    for dz in (0, 1):
        wz = fz if dz else 1 - fz
        for dy in (0, 1):
            wy = fy if dy else 1 - fy
            for dx in (0, 1):
                wx = fx if dx else 1 - fx
                zi, yi, xi = z0 + dz, y0 + dy, x0 + dx
                inside = (zi >= 0) & (zi < p) & (yi >= 0) & (yi < p) & (xi < nx)
                index.append(np.where(inside, (zi * p + yi) * nx + xi, 0))
                weight.append(np.where(inside, wz * wy * wx, 0.0))
    return np.stack(index, -1), np.stack(weight, -1), conj


def project(fvol: FourierVolume, matrices, shifts_px=None, ctf=None, max_radius_px=None) -> np.ndarray:
    """Fourier projections of a prepared volume for n poses at once.

    matrices: (n, 3, 3) poses A. shifts_px: (n, 2) RELION origins o (px) or None; the result is the
    spectrum of ``P_A[V](x + o)``. ctf: (n, N, N//2+1) float or None, multiplied in. max_radius_px:
    keep only |k| ≤ this (Fourier px), default Nyquist N/2. Returns (n, N, N//2+1) complex64.
    """
    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    n_img, n = len(matrices), fvol.box
    coords, keep = _slice_coordinates(fvol, matrices, max_radius_px)
    index, weight, conj = _trilinear(fvol, coords)
    flat = fvol.data.reshape(-1)
    values = (flat[index] * weight.astype(np.float32)).sum(-1)
    values = np.where(conj, np.conj(values), values)
    out = np.zeros((n_img, n * (n // 2 + 1)), dtype=np.complex64)
    out[:, keep] = values
    out = out.reshape(n_img, n, n // 2 + 1)
    if shifts_px is not None:
        out = shift_images_ft(out, shifts_px)
    if ctf is not None:
        out = out * np.asarray(ctf, dtype=np.float32)
    return out


def phase_ramp(box: int, shifts_px) -> np.ndarray:
    """``exp(2πi k·s / N)`` for shifts (n, 2) px: (n, N, N//2+1) complex64; multiplying moves content by −s."""
    kx, ky = image_frequencies(box)
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    phase = 2 * np.pi * (kx[None] * s[:, 0, None, None] + ky[None] * s[:, 1, None, None]) / box
    return np.exp(1j * phase).astype(np.complex64)


def shift_images_ft(images_ft, shifts_px) -> np.ndarray:
    """Spectra of ``image(x + s)`` (content moved by −s) for images (n, N, N//2+1) and shifts (n, 2) px."""
    images_ft = np.asarray(images_ft)
    return images_ft * phase_ramp(images_ft.shape[-2], shifts_px)


def to_fourier(images) -> np.ndarray:
    """Real images (..., N, N) → lorefine's rfft2 layout (..., N, N//2+1) complex64."""
    images = np.asarray(images, dtype=np.float32)
    return np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1))).astype(np.complex64)


def to_real(images_ft, box: int) -> np.ndarray:
    """lorefine's rfft2 layout (..., N, N//2+1) → real images (..., N, N) float32."""
    real = np.fft.irfft2(np.asarray(images_ft), s=(box, box))
    return np.fft.fftshift(real, axes=(-2, -1)).astype(np.float32)
