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
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not error.filename:  # say which file could not be written (a full disk)
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise


def same_file(a, b) -> bool:
    """Whether two paths name one existing file (symlinks, hard links and ./ included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_new_output(option: str, path, inputs) -> Path:
    """An output named on the command line: its folder exists, and it is none of the command's inputs."""
    from lorefine_mpi.errors import InputError

    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{option}: folder {path.parent} does not exist")
    for given in inputs:
        if same_file(path, given):
            raise InputError(f"{option}: {path} is an input of this command ({given}); it would be overwritten: choose another name")
    return path
