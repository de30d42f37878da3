"""Test driver: `lorefine refine` with a failure raised by one rank's first work unit (fault injection).

FAIL_RANK: the rank (default 1). FAIL_KIND: ``bug`` (a RuntimeError, default) or ``input`` (an InputError,
as an unreadable image would raise).
"""

import os
import sys

from lorefine_mpi.errors import InputError
from lorefine_mpi.refine import engine

FAIL_RANK = int(os.environ.get("FAIL_RANK", "1"))
FAIL_KIND = os.environ.get("FAIL_KIND", "bug")
_original = engine.StageSearch.search_unit


def _failing(self, ids):
    if int(os.environ.get("PMI_RANK", "0")) == FAIL_RANK:
        if FAIL_KIND == "input":
            raise InputError(f"injected input error on rank {FAIL_RANK}")
        raise RuntimeError(f"injected failure on rank {FAIL_RANK}")
    return _original(self, ids)


engine.StageSearch.search_unit = _failing

from lorefine_mpi.cli.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
