"""Node-shared read-only arrays: one copy per node in MPI-3 shared memory, whatever the ranks per node."""

from __future__ import annotations

import numpy as np


class SharedArray:
    """An array allocated once per node (``Win.Allocate_shared``), filled by the node leader,
    then seen read-only by every rank of the node. With a serial context it is a plain array.

    fill: callable(out_array) run by the node leader only.
    """

    def __init__(self, ctx, shape, dtype, fill):
        self.window = None
        dtype = np.dtype(dtype)
        if ctx.node is None:
            self.array = np.empty(shape, dtype=dtype)
            fill(self.array)
            return
        from mpi4py import MPI

        nbytes = int(np.prod(shape)) * dtype.itemsize if ctx.is_node_leader else 0
        self.window = MPI.Win.Allocate_shared(nbytes, dtype.itemsize, comm=ctx.node)
        buffer, _ = self.window.Shared_query(0)
        self.array = np.ndarray(shape, dtype=dtype, buffer=buffer)
        if ctx.is_node_leader:
            fill(self.array)
        self.window.Fence()
        ctx.node_barrier()
        self.array.flags.writeable = False

    def free(self) -> None:
        if self.window is not None:
            self.window.Free()
            self.window = None
        self.array = None
