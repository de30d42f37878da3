"""Every rank's memory over a whole command: what `lorefine refine` holds, phase by phase.

    python benchmarks/memtrace.py OUT.tsv -- mpiexec -n 3 lorefine refine run.yaml

Runs the command (its output to ``OUT.tsv.log``), samples the private resident memory (RssAnon) and the shared memory
(RssShmem) of every process under it every 0.1 s into ``OUT.tsv`` (seconds, pid, RssAnon MiB, RssShmem MiB, command),
and prints each process's peak RssAnon with the time it was reached (only processes above 50 MiB: the ranks, not the
launcher). The log's time stamps place the peaks in the run's phases.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def descendants(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def sample(pid: int):
    """(RssAnon MiB, RssShmem MiB, command) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        with open(f"/proc/{pid}/cmdline") as f:
            command = f.read().replace("\0", " ")[:60]
        return int(status["RssAnon"].split()[0]) // 1024, int(status["RssShmem"].split()[0]) // 1024, command
    except (OSError, KeyError):
        return None


def main(argv) -> int:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(__doc__)
    out, command = argv[0], argv[2:]
    started = time.time()
    with open(out + ".log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    peaks = {}
    with open(out, "w") as table:
        while child.poll() is None:
            now = round(time.time() - started, 1)
            for pid in descendants(child.pid):
                figures = sample(pid)
                if figures is None:
                    continue
                anon, shared, name = figures
                table.write(f"{now}\t{pid}\t{anon}\t{shared}\t{name}\n")
                if anon > peaks.get(pid, (0,))[0]:
                    peaks[pid] = (anon, shared, now, name)
            time.sleep(0.1)
    for pid, (anon, shared, when, name) in sorted(peaks.items()):
        if anon > 50:
            print(f"{pid} peak RssAnon MiB {anon} shm {shared} at {when} s {name}")
    print(f"exit {child.returncode} wall {time.time() - started:.1f}")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
