"""What the sharded stages (reference, evaluate, sample, pool) share under a job of many processes: the job's
context, and an MLflow run that only rank 0 opens (the other ranks record nothing, as they write nothing)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dkdm.console import Context
from dkdm.tracking import NullRunTracker, RunTracker, start_run
from training.train.distributed import DistContext


def job_of(ctx: Context, dist: DistContext | None) -> DistContext:
    """The job this stage runs in: the one `distributed_job` joined, or one process on the profile's device."""
    return dist if dist is not None else DistContext(device=ctx.device)


@contextmanager
def main_run(ctx: Context, dist: DistContext, **run: Any) -> Iterator[RunTracker | NullRunTracker]:
    """`start_run(ctx.settings, **run)` on rank 0; a tracker that records nothing on the other ranks."""
    if not dist.is_main:
        yield NullRunTracker()
        return
    with start_run(ctx.settings, **run) as tracker:
        tracker.log_params({"world_size": dist.world_size})
        yield tracker
