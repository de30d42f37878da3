"""Matplotlib (Agg) figures written atomically: every PNG lorefine makes goes through `save_png`."""

from __future__ import annotations

import os
import tempfile


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed; safe on compute nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path) -> None:
    """Save ``fig`` as PNG to a temporary name beside ``path``, rename it over ``path``, close the figure."""
    plt = pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
