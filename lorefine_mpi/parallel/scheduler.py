"""Dynamic load balancing of work units: rank 0 hands units to workers on request, as RELION's leader does.

Rank 0 (the master) also computes: between units it answers requests (``Iprobe``), and every worker
keeps one unit queued ahead (it asks twice at the start, and each result it returns asks for one
more), so the master's own work never leaves a worker idle. Only unit numbers go out and small result
arrays come back; workers read their images themselves. The master records every finished unit
(``record``) as it arrives. (One process works through the units alone: `refine.distributor.Distributor`.)

A stop request (SIGTERM/SIGUSR1/SIGINT on any rank) ends the hand-out: units in flight finish and are
recorded, then every rank returns ``False`` (not all units done).

A user's mistake met by a worker in a unit (an image with NaN values, a stack that cannot be read) goes
back to rank 0 in place of the unit's result; rank 0 raises it, so it is printed once and ends the job
(`context.guard`) between two of rank 0's checkpoint writes.
"""

from __future__ import annotations

import time

from lorefine_mpi.errors import InputError, describe_os_error

_TAG_WORK = 11
_TAG_RESULT = 12
_STOP = -1


def run_units(ctx, pending, process, record, log=None) -> bool:
    """Process every unit in ``pending`` (ascending unit numbers) with ``process(unit) -> result`` on two ranks or
    more (ctx: the `parallel.mpi.MPIDistributor`); ``record(unit, result)`` runs on rank 0 for each. Returns True
    when all were done (on every rank)."""
    pending = list(pending)
    if ctx.is_root:
        finished = _master(ctx, pending, process, record, log)
    else:
        finished = _worker(ctx, process)
    return bool(ctx.bcast(finished))


def _master(ctx, pending, process, record, log):
    from mpi4py import MPI

    comm = ctx.comm
    workers = range(1, ctx.size)
    outstanding = {w: 0 for w in workers}
    requests_seen = {w: 0 for w in workers}
    stopped = set()
    total, done = len(pending), 0
    status = MPI.Status()

    def give(worker):
        if pending and not ctx.stop_requested:
            comm.send(pending.pop(0), dest=worker, tag=_TAG_WORK)
            outstanding[worker] += 1

    while True:
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            source, tag = status.Get_source(), status.Get_tag()
            message = comm.recv(source=source, tag=tag)
            if tag == _TAG_WORK:  # a request
                requests_seen[source] += 1
                give(source)
            else:
                unit, result, worker_stop = message
                if isinstance(result, _Failure):
                    raise InputError(result.message)
                ctx.stop_requested |= worker_stop
                outstanding[source] -= 1
                record(unit, result)
                done += 1
                if log:
                    log(done, total)
                give(source)
        for w in workers:
            if w not in stopped and requests_seen[w] == 2 and outstanding[w] == 0 and (not pending or ctx.stop_requested):
                comm.send(_STOP, dest=w, tag=_TAG_WORK)
                stopped.add(w)
        if len(stopped) == len(workers) and (not pending or ctx.stop_requested):
            return not pending
        if pending and not ctx.stop_requested:
            unit = pending.pop(0)
            record(unit, process(unit))
            done += 1
            if log:
                log(done, total)
        else:
            time.sleep(0.002)


def _worker(ctx, process):
    comm = ctx.comm
    comm.send(None, dest=0, tag=_TAG_WORK)
    comm.send(None, dest=0, tag=_TAG_WORK)
    while True:
        unit = comm.recv(source=0, tag=_TAG_WORK)
        if unit == _STOP:
            return True
        try:
            result = process(unit)
        except InputError as error:
            result = _Failure(str(error))
        except OSError as error:
            result = _Failure(describe_os_error(error))
        comm.send((unit, result, ctx.stop_requested), dest=0, tag=_TAG_RESULT)


class _Failure:
    """A worker's InputError, sent to rank 0 instead of a unit's result."""

    def __init__(self, message: str):
        self.message = message
