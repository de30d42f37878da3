"""The output folder's lock: one live holder; a dead holder's lock (a killed job, a requeue) is taken over."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lorefine_mpi.errors import InputError
from lorefine_mpi.io import runlock
from lorefine_mpi.io.runlock import RunLock


def write_record(folder, **fields):
    record = {"token": "0123456789abcdef", "host": "other-node", "pid": 4242, "pid_start": "1", "count": 0, "started": "then"} | fields
    (folder / runlock.NAME).write_text(json.dumps(record))
    return record


def test_a_live_holder_on_this_host_is_refused_at_once_and_released_at_the_end(tmp_path):
    holder = RunLock.acquire(tmp_path, stale_after_s=60)
    started = time.time()
    with pytest.raises(InputError, match=rf"{tmp_path}: in use by another lorefine run \(pid {os.getpid()} on "):
        RunLock.acquire(tmp_path, stale_after_s=60)
    assert time.time() - started < 1
    holder.release()
    assert not (tmp_path / runlock.NAME).exists()
    RunLock.acquire(tmp_path, stale_after_s=60).release()


def test_the_lock_of_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    write_record(tmp_path, host=socket.gethostname(), pid=int(dead.stdout))
    started = time.time()
    lock = RunLock.acquire(tmp_path, stale_after_s=60)
    assert time.time() - started < 1
    lock.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == [runlock.NAME]


def test_another_hosts_lock_is_taken_over_once_it_has_not_changed_for_the_stale_time(tmp_path):
    write_record(tmp_path)
    started = time.time()
    lock = RunLock.acquire(tmp_path, stale_after_s=1.0, poll_s=0.05)
    assert 0.9 <= time.time() - started < 5
    lock.verify()


def test_another_hosts_lock_that_is_refreshed_is_refused(tmp_path):
    record = write_record(tmp_path)
    stop = threading.Event()

    def refresh():  # the other node's watchdog
        while not stop.wait(0.1):
            record["count"] += 1
            (tmp_path / "tmp").write_text(json.dumps(record))
            os.replace(tmp_path / "tmp", tmp_path / runlock.NAME)

    thread = threading.Thread(target=refresh)
    thread.start()
    try:
        with pytest.raises(InputError, match="in use by another lorefine run .pid 4242 on other-node"):
            RunLock.acquire(tmp_path, stale_after_s=5.0, poll_s=0.05)
    finally:
        stop.set()
        thread.join()


def test_a_holder_that_lost_its_lock_stops_before_writing(tmp_path):
    first = RunLock.acquire(tmp_path, stale_after_s=60)
    os.utime(tmp_path / runlock.NAME, (0, 0))  # as if suspended for a long time on another node ...
    record = json.loads((tmp_path / runlock.NAME).read_text())
    write_record(tmp_path, token=record["token"], host="other-node")
    os.utime(tmp_path / runlock.NAME, (0, 0))
    second = RunLock.acquire(tmp_path, stale_after_s=1.0, poll_s=0.05)  # ... so the requeued job took over
    with pytest.raises(InputError, match="took over this output folder"):
        first.verify()
    with pytest.raises(InputError, match="took over this output folder"):
        first.refresh()
    second.verify()


def test_a_refresh_racing_the_release_neither_fails_nor_leaves_the_lock_behind(tmp_path):
    # the watchdog thread refreshes while the main thread releases at the end of a run: a refresh that found
    # the lock gone ended a finished job with "another run took over"; one that rewrote it left it behind
    for _ in range(50):
        lock = RunLock.acquire(tmp_path, stale_after_s=60)
        errors, go = [], threading.Event()

        def refresh():
            go.wait()
            for _ in range(200):
                try:
                    lock.refresh()
                except InputError as error:
                    errors.append(error)

        thread = threading.Thread(target=refresh)
        thread.start()
        go.set()
        lock.release()
        thread.join()
        assert errors == [] and not (tmp_path / runlock.NAME).exists()
