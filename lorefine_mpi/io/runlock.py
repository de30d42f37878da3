"""The lock of an output folder: one `lorefine refine` at a time writes into it.

``OUT/.lorefine.lock`` holds a JSON record of its holder: a random token, host, pid and the pid's start
time, the Slurm job id, when it was taken, and a counter that the holder increases every few seconds
(`refresh`, from the watchdog thread). HDF5's own file locking is not relied on: many clusters turn it off
(``HDF5_USE_FILE_LOCKING=FALSE``) on parallel file systems, where it does not work across nodes.

Taking it (`acquire`): the record is written to a file of its own, then hard-linked to the lock's name,
which fails if a lock exists (atomic, also on NFS). If one exists, its holder is
  - alive if it is a process of this host that still runs (same pid, same start time): refused at once;
  - dead if it is a process of this host that no longer runs: taken over;
  - otherwise (another node, or a record that cannot be read) watched: a counter that moves means alive
    (refused); a record that has not changed for ``stale_after_s`` (its age measured against a file
    written now, so on the file system's clock) means dead: taken over. A dead job's requeue so waits at
    most ``stale_after_s`` (the same time after which the watchdog ends a job with a silent rank).
Taking over renames the stale record aside and checks that it moved the record it judged; if not (another
run took over in between) it puts that one back and looks again, so two runs never both hold the lock.
The holder checks its token before every write (`verify`) and at every refresh: a run that lost the lock
(suspended for longer than ``stale_after_s`` while another took over) stops without writing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from lorefine_mpi.errors import InputError
from lorefine_mpi.io.files import identity

log = logging.getLogger(__name__)

NAME = ".lorefine.lock"


def _process_start(pid: int) -> str | None:
    """The start time of a process of this host (clock ticks since boot, /proc), or None if it does not run
    (a zombie, dead but not yet reaped by its parent, does not run)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _read(path: Path) -> dict | None:
    """The record at ``path``; None if there is no file; {} if it cannot be read as a record."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def describe(record: dict) -> str:
    if not record:
        return "a lock whose holder cannot be read"
    job = f", Slurm job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
    return f"pid {record.get('pid')} on {record.get('host')}{job}, started {record.get('started')}"


def judge(record: dict) -> str:
    """'alive', 'dead' (a process of this host that no longer runs) or 'unknown' (another host)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return "unknown"
    start = _process_start(record["pid"])
    if start is None:
        return "dead" if Path("/proc/self/stat").exists() else "unknown"
    return "alive" if start == record.get("pid_start") else "dead"


def age_s(path: Path, probe: Path) -> float:
    """How long ago ``path`` was last written, on the file system's clock (``probe`` is touched now)."""
    probe.touch()
    return probe.stat().st_mtime - path.stat().st_mtime


class RunLock:
    """The lock of ``folder``, held by this process (`acquire`)."""

    def __init__(self, folder, command: str = ""):
        self.folder = Path(folder)
        self.path = self.folder / NAME
        self.token = secrets.token_hex(8)
        self.record = {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "count": 0,
            "command": command,
        }
        self._own = self.folder / f"{NAME}.{self.token}"
        self._folder_id = identity(self.folder)  # the folder this run locks (`verify` tells a moved folder from a lost lock)
        self._mutex = threading.Lock()  # `refresh` runs on the watchdog thread, `release` on the main thread
        self._released = False

    @classmethod
    def acquire(cls, folder, stale_after_s: float, command: str = "", poll_s: float = 1.0) -> "RunLock":
        """Take the lock of ``folder`` (which exists), taking over a dead holder's; InputError if a live run holds it."""
        lock = cls(folder, command)
        lock._write(lock._own)
        try:
            while True:
                try:
                    os.link(lock._own, lock.path)
                    return lock
                except FileExistsError:
                    pass
                other = _read(lock.path)
                if other is None:
                    continue
                verdict = judge(other)
                if verdict == "alive":
                    raise InputError(f"{lock.folder}: in use by another lorefine run ({describe(other)}); wait for it to end, or use another output folder")
                if verdict == "unknown" and not lock._watch(other, stale_after_s, poll_s):
                    continue  # the record changed hands: judge the new one
                lock._take_over(other)
        finally:
            lock._own.unlink(missing_ok=True)

    def _watch(self, other: dict, stale_after_s: float, poll_s: float) -> bool:
        """Wait until ``other`` is stale (True); InputError if its holder shows life; False if it was replaced."""
        try:
            waited = age_s(self.path, self._own)
        except FileNotFoundError:
            return False
        if waited < stale_after_s:
            log.info("%s: held by %s; waiting up to %.0f s to see whether it is alive", self.path, describe(other), stale_after_s - waited)
        while waited < stale_after_s:
            time.sleep(poll_s)
            waited += poll_s
            now = _read(self.path)
            if now is None or now.get("token") != other.get("token"):
                return False
            if now != other:
                raise InputError(f"{self.folder}: in use by another lorefine run ({describe(now)}); wait for it to end, or use another output folder")
        return True

    def _take_over(self, stale: dict) -> None:
        """Move the stale record aside, if it is still the one at the lock's name."""
        aside = self.folder / f"{NAME}.stale.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside)
        if moved != stale:  # another run took over in between: give its lock back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("%s: took over the lock of a run that is no longer alive (%s)", self.path, describe(stale))
        aside.unlink(missing_ok=True)

    def _write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, path)

    def verify(self) -> None:
        """InputError unless this process still holds the lock, naming what happened: the folder deleted, moved or
        replaced, the lock file deleted, or another run that took the folder over."""
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.token:
            return
        stop = "this run stops without writing more"
        folder = identity(self.folder)
        if folder is None:
            raise InputError(f"{self.folder}: the output folder was deleted or moved while this run was writing into it; {stop} "
                             "(a moved folder can be resumed where it is now: set output to it and use --continue)")
        if folder != self._folder_id:
            raise InputError(f"{self.folder}: the output folder was replaced by another folder of that name while this run was "
                             f"writing into it; {stop}")
        if holder is None:
            raise InputError(f"{self.path}: this run's lock file was deleted while the run held it (by hand?); {stop}, as another "
                             "run could now take the folder")
        who = "another lorefine run" if not holder else f"another lorefine run ({describe(holder)})"
        raise InputError(f"{self.path}: {who} took over this output folder (this run was silent for too long); {stop}")

    def refresh(self) -> None:
        """Show life: increase the counter (InputError if the lock was lost); nothing once released."""
        with self._mutex:
            if self._released:
                return
            self.verify()
            self.record["count"] += 1
            self._write(self.path)

    def release(self) -> None:
        """Remove the lock if this process holds it. A refresh on another thread cannot interleave: neither
        lose the lock to a refresh that saw it gone (and ended the job), nor rewrite it after its removal."""
        with self._mutex:
            self._released = True
            holder = _read(self.path)
            if holder and holder.get("token") == self.token:
                self.path.unlink(missing_ok=True)


class LockRefresher:
    """A daemon thread that refreshes a `RunLock` (``.lock``, set once taken) every ``min(10 s, timeout_s / 5)``
    while the run goes on; use as a context manager around the run. When the lock was lost (another run took the
    folder over) it calls ``on_lost(error)`` (default: stop refreshing; the next `RunLock.verify` before a write
    stops the run). A passing file-system error is logged and tried again. Subclasses add their own work to each
    turn of the thread (`tick`; `parallel.watchdog.Watchdog`)."""

    def __init__(self, timeout_s: float, on_lost=None):
        self.timeout_s = float(timeout_s)
        self.interval_s = min(10.0, self.timeout_s / 5.0)
        self.on_lost = on_lost
        self.lock = None
        self._stop = threading.Event()
        self._thread = None
        self._next_refresh = None

    def __enter__(self):
        self._next_refresh = time.monotonic() + self.interval_s
        self._thread = threading.Thread(target=self._loop, name="lorefine-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def _loop(self) -> None:
        while not self._stop.wait(min(0.5, self.interval_s / 4.0)):
            self.tick(time.monotonic())
        self.finish()

    def tick(self, now: float) -> None:
        """One turn of the thread: refresh the lock when it is set and due."""
        lock = self.lock
        if lock is None or now < self._next_refresh:
            return
        self._next_refresh = now + self.interval_s
        try:
            lock.refresh()
        except InputError as error:  # another run took the folder over
            self.lock = None
            if self.on_lost is not None:
                self.on_lost(error)
        except OSError as error:  # a passing file-system hiccup: try again next time
            log.warning("could not refresh %s: %s", lock.path, error)

    def finish(self) -> None:
        """The thread's last act (nothing here)."""


RECENT_S = 60.0  # a holder refreshes its lock every 10 s at most: older than this, `current` does not call it live


def current(folder) -> str | None:
    """Who seems to hold the lock of ``folder`` now, for `lorefine check` (which does not wait to find
    out): a live process of this host, or a lock on another host written within `RECENT_S`; else None."""
    path = Path(folder) / NAME
    record = _read(path)
    if record is None:
        return None
    verdict = judge(record)
    if verdict == "alive":
        return describe(record)
    if verdict == "dead":
        return None
    try:
        age = time.time() - path.stat().st_mtime  # this host's clock: `check` writes nothing to compare with
    except OSError:
        return None
    return f"{describe(record)}; its lock was refreshed {age:.0f} s ago" if age < RECENT_S else None
