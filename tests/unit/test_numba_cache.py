"""numba's cache stays out of the package, and a stale package folder left by an old install does not hide this one.

The failure this guards against (issue 29, reproduced in a scratch venv): the README's first command installed
lorefine as a wheel and ran it; numba wrote ``cpu.*.nbi``/``*.nbc`` into ``site-packages/lorefine_mpi/kernels/__pycache__``;
the second command's ``pip install -e`` uninstalled the wheel but left that folder (pip removes only the files it
installed), and ``site-packages/lorefine_mpi`` became a namespace package that hid the editable install:
``ImportError: cannot import name 'backend' from 'lorefine_mpi.kernels' (unknown location)``.
"""

import os
import subprocess
import sys
from pathlib import Path

import lorefine_mpi

CHECKOUT = Path(lorefine_mpi.__file__).resolve().parent

PROBE = """
import importlib.util, os, sys
import lorefine_mpi
from lorefine_mpi.kernels import backend, cpu
import numba
print(lorefine_mpi.__file__)
print(numba.config.CACHE_DIR)
print(cpu.gather_slices._cache._cache_path)
"""


def _python(code, *, cwd, env_changes, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def _stale_site_packages(root: Path) -> Path:
    """A folder laid out as site-packages after ``pip uninstall`` of an old lorefine that had run its kernels."""
    cache = root / "lorefine_mpi" / "kernels" / "__pycache__"
    cache.mkdir(parents=True)
    for name in ("cpu.gather_slices-25.py311.nbi", "cpu.gather_slices-25.py311.1.nbc", "cpu.scatter_slices-73.py311.nbi"):
        (cache / name).write_bytes(b"\x80\x04stale numba cache")
    return root


def test_stale_package_folder_is_a_shadow_where_lorefine_is_not_a_path_entry(tmp_path):
    """The stale folder is a real namespace package: where no regular lorefine_mpi is on sys.path (as with
    setuptools' import-hook editable mode, which lorefine no longer gets), `import lorefine_mpi` takes it."""
    stale = _stale_site_packages(tmp_path / "site")
    code = ("import sys; sys.path = [p for p in sys.path if not p or not __import__('os').path.isfile("
            "__import__('os').path.join(p, 'lorefine_mpi', '__init__.py'))]\n"
            "import lorefine_mpi; print(getattr(lorefine_mpi, '__file__', None)); print(list(lorefine_mpi.__path__))")
    done = _python(code, cwd=tmp_path, env_changes={"PYTHONPATH": str(stale)})
    assert done.returncode == 0, done.stderr
    file_line, path_line = done.stdout.splitlines()
    assert file_line == "None" and str(stale / "lorefine_mpi") in path_line  # a namespace package, no code in it


def test_stale_cache_folder_does_not_shadow_this_install(tmp_path):
    """With the stale folder first on the path, the import still resolves to this lorefine (its install is a plain
    path entry, `setup.cfg` package_dir, and a regular package always wins over namespace portions)."""
    stale = _stale_site_packages(tmp_path / "site")
    done = _python(PROBE, cwd=tmp_path, env_changes={"PYTHONPATH": str(stale), "HOME": str(tmp_path / "home")},
                   drop=("NUMBA_CACHE_DIR", "XDG_CACHE_HOME"))
    assert done.returncode == 0, done.stderr
    module_file, cache_dir, cache_path = done.stdout.splitlines()
    assert Path(module_file).resolve().parent == CHECKOUT
    assert cache_dir == str(tmp_path / "home" / ".cache" / "lorefine" / "numba")
    assert Path(cache_path).is_relative_to(cache_dir) and not Path(cache_path).is_relative_to(CHECKOUT)


def test_numba_cache_folder_rules(tmp_path):
    """XDG_CACHE_HOME is honoured; a cache home that cannot be written falls back to the temporary directory; the
    user's own NUMBA_CACHE_DIR is kept as it is."""
    xdg = _python(PROBE, cwd=tmp_path, env_changes={"XDG_CACHE_HOME": str(tmp_path / "xdg")}, drop=("NUMBA_CACHE_DIR",))
    assert xdg.returncode == 0, xdg.stderr
    assert xdg.stdout.splitlines()[1] == str(tmp_path / "xdg" / "lorefine" / "numba")

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a file where the cache home should be: cannot be written, even by root
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    fallback = _python(PROBE, cwd=tmp_path, env_changes={"XDG_CACHE_HOME": str(blocker / "cache"), "TMPDIR": str(tmp)},
                       drop=("NUMBA_CACHE_DIR",))
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.splitlines()[1] == str(tmp / f"lorefine-numba-{os.getuid()}")

    own = _python(PROBE, cwd=tmp_path, env_changes={"NUMBA_CACHE_DIR": str(tmp_path / "mine")})
    assert own.returncode == 0, own.stderr
    assert own.stdout.splitlines()[1] == str(tmp_path / "mine")
