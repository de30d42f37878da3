"""Test driver: `lorefine refine` with an exception raised by one rank's first work unit (fault injection)."""

import os
import sys

from lorefine_mpi.refine import pipeline

FAIL_RANK = int(os.environ.get("FAIL_RANK", "1"))
_original = pipeline.RefineRun._process_unit


def _failing(self, *args, **kwargs):
    if self.ctx.rank == FAIL_RANK:
        raise RuntimeError(f"injected failure on rank {FAIL_RANK}")
    return _original(self, *args, **kwargs)


pipeline.RefineRun._process_unit = _failing

from lorefine_mpi.cli.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
