"""Matplotlib (Agg) figures written atomically: every PNG lorefine makes goes through `save_png`."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed; safe on compute nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path) -> None:
    """Save ``fig`` as PNG to a temporary name beside ``path``, rename it over ``path`` (`io.files.replacing`:
    the user's umask), close the figure."""
    from lorefine_mpi.io.files import replacing

    plt = pyplot()
    try:
        with replacing(path, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def resolution_axis(ax) -> None:
    """A top axis in Å over an x axis in 1/Å."""
    low, high = ax.get_xlim()
    top = ax.twiny()
    top.set_xlim(low, high)
    marks = [r for r in (100, 50, 30, 20, 15, 12, 10, 8, 6, 5, 4, 3, 2.5, 2) if low < 1 / r < high]
    top.set_xticks([1 / r for r in marks])
    top.set_xticklabels([f"{r:g}" for r in marks])
    top.set_xlabel("resolution (Å)")
