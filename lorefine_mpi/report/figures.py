"""Figures the report draws itself from a run folder's maps (PNG bytes, to embed): a module before and after."""

from __future__ import annotations

import io

import numpy as np

from lorefine_mpi.geometry.volumes import centre_of_mass_px

MARGIN_PX = 4  # around the mask's extent in the slices


def crop_box(mask, threshold: float = 0.05) -> tuple[slice, slice, slice]:
    """The (z, y, x) slices of the box around ``mask > threshold`` plus `MARGIN_PX`, made cubic-ish (the largest extent
    on every axis, within the box)."""
    n = mask.shape[0]
    where = np.argwhere(mask > threshold)
    if not len(where):
        return (slice(0, n),) * 3
    low, high = where.min(axis=0), where.max(axis=0) + 1
    half = (high - low).max() // 2 + MARGIN_PX
    centre = (low + high) // 2
    return tuple(slice(max(0, int(c) - half), min(n, int(c) + half)) for c in centre)


def central_slices(volume, centre_zyx, box) -> list[np.ndarray]:
    """Three orthogonal sections through ``centre_zyx`` (voxel indices), cut to ``box``: the xy plane (z fixed), the xz
    plane (y fixed) and the yz plane (x fixed), each as a 2D array for imshow (rows: y, z, z)."""
    z, y, x = centre_zyx
    bz, by, bx = box
    return [volume[z, by, bx], volume[bz, y, bx], volume[bz, by, x]]


def before_after_png(before, after, mask, voxel_size_angstrom: float, labels=("consensus", "refined"), title: str = "") -> bytes:
    """A PNG: two rows (``before`` above, ``after`` below, (N, N, N) maps of one module in the consensus frame) of three
    orthogonal sections through the centre of mass of ``mask``, cut to the mask's extent, on one grey scale (the 1st
    to 99.8th percentile of both maps inside the mask), so that a sharper map shows as sharper, not as brighter."""
    from lorefine_mpi.validation import plots

    plt = plots.pyplot()
    n = mask.shape[0]
    centre = np.clip(np.rint(centre_of_mass_px(mask)[::-1]).astype(int) + n // 2, 0, n - 1)  # xyz from the centre -> zyx index
    box = crop_box(mask)
    inside = mask > 0.5
    values = np.concatenate([before[inside], after[inside]]) if inside.any() else np.concatenate([before.ravel(), after.ravel()])
    low, high = np.percentile(values, [1.0, 99.8])
    planes = ("xy", "xz", "yz")
    fig, axes = plt.subplots(2, 3, figsize=(7.6, 5.4), dpi=100)
    for row, (volume, label) in enumerate(zip((before, after), labels)):
        for col, section in enumerate(central_slices(volume, centre, box)):
            ax = axes[row, col]
            ax.imshow(section, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=10)
            if row == 0:
                ax.set_title(f"{planes[col]} section", fontsize=9)
    extent = (box[2].stop - box[2].start) * voxel_size_angstrom
    fig.suptitle(f"{title}\nsections through the module's centre, {extent:.0f} Å wide, one grey scale", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
