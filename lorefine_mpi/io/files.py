"""Reading inputs and writing outputs safely: the one output policy of every subcommand.

Inputs (`regular_input`): a file lorefine reads is a regular file (a FIFO or a device would block or never end).

Writing (`replacing`): a file is written whole or not at all, readable as the user's umask says. ``replacing(path)``
gives a temporary name beside ``path``; when the block ends without an error the file gets the permissions a plain
``open()`` would give (``0o666 & ~umask``; `tempfile.mkstemp` makes 0600, which colleagues in a shared project group
cannot read) and is renamed over ``path``; on an error it is removed, so ``path`` keeps its old contents. What it
replaces is checked first: only a regular file (never a folder, a symbolic link, a FIFO or a device: renaming over a
device node would turn it into a plain file). Every file written so is recorded in its folder's `MANIFEST` (one
line per write: size, modification time in ns, name), so lorefine knows later which files it made.

The output policy (checked before any heavy work, by every subcommand; `check_output_file`, `check_output_folder`):
    - an output is never one of the command's inputs (the same file under any name: symlinks, hard links, ./);
    - an output that exists already is a regular file that lorefine made (in the manifest, unchanged since) or, inside
      a lorefine run's folder, a file at one of the run's own output names (the run owns them); anything else is
      refused, never overwritten;
    - an output folder is new, empty, or holds only what lorefine made (`foreign_entry`);
    - nothing is written into a folder that a live `lorefine refine` holds (its lock, `io.runlock`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from lorefine_mpi.errors import InputError

MANIFEST = ".lorefine-made"
# `replacing`'s temporary names (mkstemp: '.' + name + '.' + 8 random characters + suffix), and the lock's files
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?$")
_LOCK_FILES = re.compile(r"^\.lorefine\.lock(\..*)?$")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import (os.umask can only be read by setting it)

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, for a message ('a regular file', 'a FIFO (named pipe)', ...)."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file")


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:  # a component that is not a folder, a name too long: nothing can be there
        if error.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            return None
        raise


def regular_input(path, what: str = "file") -> Path:
    """``path`` of an input that exists and is a regular file (symlinks followed); InputError otherwise."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is {kind_of(st.st_mode)}, not a regular file; expected the {what}")
    return path


# -- what lorefine made ------------------------------------------------------------------------

def record_made(path) -> None:
    """Add ``path`` (just written) to its folder's manifest: appended in one write, so concurrent writers do not mix."""
    path = Path(path)
    if "\n" in path.name:
        return
    st = os.stat(path)
    line = f"{st.st_size} {st.st_mtime_ns} {path.name}\n".encode("utf-8", "surrogateescape")
    fd = os.open(path.parent / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _manifest(folder) -> dict:
    """{name: (size, mtime_ns)} of the files lorefine wrote into ``folder`` (the last record of each)."""
    try:
        data = (Path(folder) / MANIFEST).read_bytes()
    except OSError:
        return {}
    made = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            made[parts[2]] = (int(parts[0]), int(parts[1]))
    return made


def made_by_lorefine(path, manifest: dict | None = None) -> bool:
    """Whether ``path`` is a regular file lorefine wrote and nobody changed since (its manifest's size and time)."""
    path = Path(path)
    st = _lstat(path)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    record = (manifest if manifest is not None else _manifest(path.parent)).get(path.name)
    return record == (st.st_size, st.st_mtime_ns)


def foreign_entry(folder, own=None) -> Path | None:
    """The first entry below ``folder`` that lorefine did not make (None when all are lorefine's, or the folder is
    empty or absent). lorefine's: the files of the manifests, the manifests, lorefine's lock and temporary files,
    folders holding only those, and the names ``own(path) -> bool`` accepts."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    made = _manifest(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return folder
    for entry in entries:
        path = Path(entry.path)
        name = entry.name
        if name == MANIFEST or _LOCK_FILES.match(name) or _TEMPORARY.match(name) or (own is not None and own(path)):
            continue
        if entry.is_dir(follow_symlinks=False):
            inner = foreign_entry(path, own)
            if inner is not None:
                return inner
            continue
        if not made_by_lorefine(path, made):
            return path
    return None


# -- writing -------------------------------------------------------------------------------

def refuse_non_regular(path, option: str | None = None) -> None:
    """InputError if ``path`` exists and is not a regular file (a folder, a symlink, a FIFO, a device)."""
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        where = f"{option}: " if option else ""
        raise InputError(f"{where}{path} is {kind_of(st.st_mode)}, not a regular file; lorefine writes only regular files "
                         "(it would replace it): choose another name")


@contextlib.contextmanager
def replacing(path, suffix: str = ""):
    """``with replacing(path) as tmp: write tmp`` — then tmp is renamed over path (see the module docstring)."""
    path = Path(path)
    refuse_non_regular(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        os.close(fd)
        yield Path(tmp)
        refuse_non_regular(path)  # again: what is there now is what the rename replaces
        os.replace(tmp, path)
        record_made(path)
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


# -- the output policy ---------------------------------------------------------------------------

def live_run_holding(path) -> str | None:
    """A live `lorefine refine` that holds ``path`` or a folder above it (its lock), described; None when none does."""
    from lorefine_mpi.io import runlock

    p = Path(os.path.abspath(path))
    for folder in (p, *p.parents):
        if (folder / runlock.NAME).exists():
            holder = runlock.current(folder)
            if holder is not None:
                return f"{folder} is in use by a running lorefine refine ({holder})"
    return None


def _refuse_inputs(option: str, path: Path, inputs) -> None:
    for given in inputs:
        if same_file(path, given):
            raise InputError(f"{option}: {path} is an input of this command ({given}); it would be overwritten: choose another name")


def check_output_file(option: str, path, inputs, owned: bool = False) -> Path:
    """An output file named on the command line (or one of a folder's, `check_output_folder`): its folder exists and can
    be written, no live run holds it, it is none of the command's ``inputs``, and if it exists it is a regular file
    lorefine made (``owned``: one of a lorefine run folder's own outputs, which the run owns whatever wrote them)."""
    path = Path(os.path.abspath(path))
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option}: folder {folder} cannot be written")
    held = live_run_holding(folder)
    if held:
        raise InputError(f"{option}: {held}; wait for it to end")
    _refuse_inputs(option, path, inputs)
    refuse_non_regular(path, option)
    if path.exists() and not owned and not made_by_lorefine(path):
        raise InputError(f"{option}: {path} exists and lorefine did not write it (or it changed since); lorefine replaces only its "
                         "own files: remove it or choose another name")
    return path


def creatable(folder) -> bool:
    """The folder exists or can be created: its nearest existing ancestor is a writable directory."""
    p = Path(folder)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def identity(path) -> tuple | None:
    """(device, inode) of an existing path (symlinks followed), None when there is none: tells a file or folder from
    another one put at its name."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output_folder(option: str, folder, outputs, inputs) -> Path:
    """An output folder named on the command line: new, empty or holding only what lorefine made, no live run in it,
    and each of ``outputs`` (names in it) checked as `check_output_file`. Nothing is created here."""
    folder = Path(os.path.abspath(folder))
    st = _lstat(folder)
    if st is not None and not stat.S_ISDIR(os.stat(folder).st_mode):
        raise InputError(f"{option}: {folder} is {kind_of(os.stat(folder).st_mode)}; expected a folder")
    if not creatable(folder):
        raise InputError(f"{option}: {folder} cannot be created (no writable folder above it)")
    held = live_run_holding(folder)
    if held:
        raise InputError(f"{option}: {held}; wait for it to end, or choose another folder")
    for name in outputs:
        _refuse_inputs(option, folder / name, inputs)
    foreign = foreign_entry(folder)
    if foreign is not None:
        raise InputError(f"{option}: {folder} holds {foreign.relative_to(folder)}, which lorefine did not write; expected a new or "
                         "empty folder, or one lorefine wrote")
    for name in outputs:
        refuse_non_regular(folder / name, option)
    return folder
