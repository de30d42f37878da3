"""Test driver: `lorefine refine` with every half-map reconstruction recorded: one line ``rank`` appended to
``$RECORD_DIR/reconstructions_<rank>.txt`` per `BackProjector.reconstruct` call."""

import os
import sys
from pathlib import Path

from lorefine_mpi.reconstruction.backproject import BackProjector

_original = BackProjector.reconstruct


def _recorded(self, *args, **kwargs):
    rank = os.environ.get("PMI_RANK", "0")
    with open(Path(os.environ["RECORD_DIR"]) / f"reconstructions_{rank}.txt", "a") as f:
        f.write(f"{rank}\n")
    return _original(self, *args, **kwargs)


BackProjector.reconstruct = _recorded

from lorefine_mpi.cli.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
