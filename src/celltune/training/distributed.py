"""What a training process needs to know when Lightning runs it as one of several (DDP).

Lightning's DDP launcher on CPU (and on GPUs without ``torchrun``) starts ranks 1..N-1 by
re-running the same command line. Those worker processes must train alongside rank 0 but
must not prepare, overwrite or write the run folder: rank 0 owns every file.

Example:
    >>> process_rank()
    0
    >>> steps_per_process(items=16, batch_size=2, drop_last=True, world_size=2)
    4
"""

from __future__ import annotations

import math


def process_rank() -> int:
    """Global rank of this process: 0 unless a distributed launcher started it as a worker.

    Lightning sets the rank from ``RANK``/``LOCAL_RANK`` when it is imported (that is how a
    re-launched worker knows it is one before any trainer exists) and updates it when a
    strategy sets up its process group.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_worker() -> bool:
    """True in DDP ranks other than 0, which train but write nothing."""
    return process_rank() > 0


def steps_per_process(items: int, batch_size: int, drop_last: bool, world_size: int) -> int:
    """Optimiser steps per epoch in each process once a distributed sampler shards the items.

    Lightning wraps the training sampler in a ``DistributedSampler``, which pads the items to
    an equal share per process, so each process sees ``ceil(items / world_size)`` of them. The
    learning-rate schedule must count these steps, not the single-process loader's length,
    or under DDP it would stop half-way through its warm-up and cosine decay.
    """
    world_size = max(1, int(world_size))
    per_process = math.ceil(items / world_size)
    steps = per_process // batch_size if drop_last else math.ceil(per_process / batch_size)
    return max(1, steps)
