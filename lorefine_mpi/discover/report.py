"""`discover`'s report page (``OUT/report.png``): the probes over the map, the modules over the map, the coherence
matrix ordered by module, and the criterion's curve with the chosen number of modules."""

from __future__ import annotations

import numpy as np

from lorefine_mpi.validation.plots import pyplot, save_png


def _top_view(consensus, labels):
    """The map's maximum along z (y, x) and, per pixel, the label of the voxel holding it (−1 where no label)."""
    v = np.asarray(consensus, dtype=np.float64)
    depth = np.argmax(v, axis=0)
    top = np.take_along_axis(v, depth[None], axis=0)[0]
    label = np.take_along_axis(np.asarray(labels), depth[None], axis=0)[0]
    return top, label


def write_report_png(path, consensus, probe_labels, grouping, c, centres_px, module_voxels) -> None:
    """consensus: (N, N, N) the map; probe_labels: (N, N, N) int, −1 outside the density; grouping:
    `discover.coherence.Grouping`; c: (P, P) coherence; centres_px: (P, 3) xyz px from the box centre; module_voxels:
    (N, N, N) int, each voxel's module (`probes.module_labels`). In the modules' panel a probe placed by its position
    (not its motion) has a white label: its voxels went to the modules around it."""
    from lorefine_mpi.discover.coherence import module_order

    plt = pyplot()
    n = consensus.shape[0]
    modules = grouping.labels
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    probe_colours, module_colours = plt.get_cmap("tab20"), plt.get_cmap("tab10")
    placed = int((~grouping.by_motion).sum())
    for ax, title, volume, cmap, colour_of in (
            (axes[0, 0], f"{len(modules)} probes (max projection along z)", probe_labels, probe_colours, lambda p: probe_colours(p % 20)),
            (axes[0, 1], f"{grouping.n_modules} module(s)" + (f"; {placed} probe(s) in white placed by position" if placed else ""),
             module_voxels, module_colours, lambda p: module_colours(modules[p] % 10) if grouping.by_motion[p] else "white")):
        top, label = _top_view(consensus, volume)
        ax.imshow(top, cmap="gray", origin="lower")
        overlay = np.full(label.shape + (4,), 0.0)
        inside = label >= 0
        overlay[inside] = cmap(label[inside] % cmap.N)
        overlay[inside, 3] = 0.45
        ax.imshow(overlay, origin="lower")
        for p, (x, y, _) in enumerate(centres_px):
            ax.text(x + n // 2, y + n // 2, str(p + 1), ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "fc": colour_of(p), "alpha": 0.9})
        ax.set_title(title)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    order = module_order(modules)
    ax = axes[1, 0]
    image = ax.imshow(c[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(order)), [str(p + 1) for p in order], fontsize=7)
    ax.set_yticks(range(len(order)), [str(p + 1) for p in order], fontsize=7)
    bounds = np.nonzero(np.diff(modules[order]))[0]
    for b in bounds:
        ax.axhline(b + 0.5, color="k", lw=1.5)
        ax.axvline(b + 0.5, color="k", lw=1.5)
    ax.set_title("coherence of the probes' motions, ordered by module")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax = axes[1, 1]
    clusters, merge = grouping.criterion_curve()
    ax.plot(clusters, merge, "o-", label="coherence of the merge leaving k clusters")
    ax.axhline(grouping.threshold, color="r", ls="--", label=f"threshold τ = {grouping.threshold:.3f} (null σ {grouping.null_sigma:.3f})")
    at_cut = int((merge < grouping.threshold).sum()) + 1  # the clusters left where the merges fall below τ
    single = int((~grouping.coherent).sum())
    ax.axvline(at_cut, color="g", ls=":", label=f"cut: {at_cut} clusters → {grouping.n_modules} module(s)\n(groups of ≥ 2 probes; "
                                               f"{single} single probe(s) joined)")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("average coherence between the merged groups")
    ax.set_title("the criterion: merges above τ are made")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_png(fig, path)
