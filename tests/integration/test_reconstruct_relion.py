"""`lorefine reconstruct` against relion_reconstruct on the same STAR files."""

import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from lorefine_mpi.validation import fsc

DATA = Path(__file__).resolve().parents[1] / "data"


def read(path):
    with mrcfile.open(path) as m:
        return np.asarray(m.data, dtype=np.float64)


@pytest.mark.parametrize("name,flags", [("recon_noctf", ["--no-ctf"]), ("recon_ctf", [])])
def test_reconstruct_agrees_with_relion(tmp_path, name, flags):
    """RELION made recon_noctf without --ctf (its STAR still carries defocus values) and recon_ctf with --ctf."""
    out = tmp_path / f"{name}.mrc"
    done = subprocess.run([sys.executable, "-m", "lorefine_mpi.cli.main", "reconstruct", "--particles", str(DATA / f"{name}.star"),
                           "--out", str(out), "--half-maps", *flags], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ours, relion, truth = read(out), read(DATA / f"relion_reconstruct_{name}.mrc"), read(DATA / "phantom_whole.mrc")
    assert (tmp_path / f"{name}_half1.mrc").exists() and (tmp_path / f"{name}_half2.mrc").exists()
    n = ours.shape[0]
    up_to = int(0.8 * (n // 2))
    agreement = fsc.fsc(ours, relion, 4.0).fsc[1 : up_to + 1]
    assert agreement.min() >= 0.9, agreement.min()
    ours_vs_truth = fsc.fsc(ours, truth, 4.0).fsc[1 : up_to + 1]
    relion_vs_truth = fsc.fsc(relion, truth, 4.0).fsc[1 : up_to + 1]
    print(f"{name}: FSC(ours, RELION) min {agreement.min():.4f}; vs phantom: ours mean {ours_vs_truth.mean():.5f}, "
          f"RELION mean {relion_vs_truth.mean():.5f}")
    assert ours_vs_truth.mean() >= relion_vs_truth.mean()
