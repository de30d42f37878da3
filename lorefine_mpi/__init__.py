"""lorefine: local optimization refinement (LO-refinement) of rigid modules in cryo-EM."""

import os
import sys
import tempfile

__version__ = "0.1.0"

NUMBA_CACHE_VARIABLE = "NUMBA_CACHE_DIR"


def _writable_folder(path: str) -> bool:
    """Whether ``path`` is (or can be made) a folder this process can write a file into."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def numba_cache_folder(environ=os.environ) -> str:
    """Where numba keeps the compiled kernels (`kernels.cpu`, ``cache=True``): the user's own choice
    (``NUMBA_CACHE_DIR``) when set, else ``$XDG_CACHE_HOME/lorefine/numba`` (``~/.cache/lorefine/numba``), else, when
    that cannot be written (a read-only home on a cluster), a folder of this user in the temporary directory.

    Never inside the package: numba's default writes its ``.nbi``/``.nbc`` files into the installed package's
    ``kernels/__pycache__``, which fails on a read-only install, races when many ranks compile at once, and outlives
    ``pip uninstall`` as an empty namespace package that hides a later editable install."""
    if environ.get(NUMBA_CACHE_VARIABLE):
        return environ[NUMBA_CACHE_VARIABLE]
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [os.path.join(cache_home, "lorefine", "numba")]
    user = str(os.getuid()) if hasattr(os, "getuid") else environ.get("USERNAME", "user")
    candidates.append(os.path.join(tempfile.gettempdir(), f"lorefine-numba-{user}"))
    for folder in candidates:
        if _writable_folder(folder):
            return folder
    # Neither can be written (and so probably nothing else): numba then tries its own places in its own order.
    return candidates[0]


def _set_numba_cache() -> None:
    """Point numba's cache at `numba_cache_folder` before numba is imported (it reads the variable once, on import);
    when something imported numba already, its config is set instead."""
    if os.environ.get(NUMBA_CACHE_VARIABLE):
        return
    folder = numba_cache_folder()
    os.environ[NUMBA_CACHE_VARIABLE] = folder
    config = sys.modules.get("numba.core.config")
    if config is not None and not getattr(config, "CACHE_DIR", ""):
        config.CACHE_DIR = folder


_set_numba_cache()
