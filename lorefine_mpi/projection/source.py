"""`ParticleSource`: the one way the pipeline reads particles — a unit's images and their CTFs, by particle index.

The search, the band, the reconstruction, the subtraction and the checks never see stack paths: they ask a
source for the images (real, or their spectra in lorefine's rfft2 layout) and the CTFs of particles of its
table (ASPIRE's ``ImageSource`` plays this part there). Images are read from memory-mapped stacks; an image
holding NaN or Inf is refused with its name (`io.mrc.read_images`).
"""

from __future__ import annotations

import numpy as np

from lorefine_mpi.io import mrc
from lorefine_mpi.projection import ctf as ctf_model
from lorefine_mpi.projection import fourier


class ParticleSource:
    """The particles of a `ParticleTable`. box: N (the images' size); use_ctf: whether `ctf` gives the table's CTFs
    (False: None, images are compared and inserted without a CTF)."""

    def __init__(self, table, box: int, use_ctf: bool):
        self.table, self.box, self.use_ctf = table, int(box), bool(use_ctf)
        self.reader = mrc.StackReader()

    def __len__(self) -> int:
        return len(self.table)

    def images(self, ids) -> np.ndarray:
        """Images (k, N, N) float32 of the particles ``ids``."""
        return mrc.read_images(self.table, ids, self.reader)

    def spectra(self, ids) -> np.ndarray:
        """The particles' images (k, N, N//2+1) complex64, lorefine's rfft2 layout."""
        return fourier.to_fourier(self.images(ids))

    def ctf(self, ids, extra_angle_rad=0.0, pixels=None) -> np.ndarray | None:
        """CTFs (k, N, N//2+1) float32 of the particles ``ids`` (astigmatism angle turned by ``extra_angle_rad``,
        scalar or (k,)), or None without a CTF; (k, M) at ``pixels`` only (`projection.ctf.ctf_2d`)."""
        if not self.use_ctf:
            return None
        return ctf_model.ctf_for_table(self.table, ids, self.box, extra_angle_rad, pixels)

    def ctf_bound(self, ids) -> float:
        """An upper bound of |CTF| over the particles ``ids``: |scale| · the B-factor envelope's largest value (1 without
        a CTF, 0 for no particles)."""
        if not len(ids):
            return 0.0
        if not self.use_ctf:
            return 1.0
        t = self.table
        apix = t.pixel_size_angstrom()[ids]
        k2_max = 0.5 / apix**2  # the corner of the image, (√2 / (2 · pixel))²
        envelope = np.exp(np.maximum(-t.ctf_bfactor_angstrom2[ids] * k2_max / 4.0, 0.0))
        return float((np.abs(t.ctf_scale[ids]) * envelope).max() * (1 + 1e-6))

    def l1_bound(self, ids, batch: int) -> float:
        """The largest L1 norm of the images ``ids`` (0 for none), read ``batch`` at a time."""
        l1 = 0.0
        for start in range(0, len(ids), batch):
            images = self.images(ids[start : start + batch])
            l1 = max(l1, float(np.abs(images, dtype=np.float64).sum(axis=(1, 2)).max()))
        return l1

    def close(self) -> None:
        self.reader.close()
