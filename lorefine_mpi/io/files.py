"""Writing a file whole or not at all, readable as the user's umask says.

`replacing(path)` gives a temporary name beside ``path``; when the block ends without an error the file
gets the permissions a plain ``open()`` would give (``0o666 & ~umask``; `tempfile.mkstemp` makes 0600,
which colleagues in a shared project group cannot read) and is renamed over ``path``; on an error it is
removed, so ``path`` keeps its old contents.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import (os.umask can only be read by setting it)


@contextlib.contextmanager
def replacing(path, suffix: str = ""):
    """``with replacing(path) as tmp: write tmp`` — then tmp is renamed over path (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
