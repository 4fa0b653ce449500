"""What the sharded stages (reference, evaluate, sample, pool) share under a job of many processes: the job's
context, and an MLflow run that only rank 0 opens (the other ranks record nothing, as they write nothing)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dkdm.console import Context
from dkdm.settings import Settings
from dkdm.tracking import NullRunTracker, RunTracker, start_run
from training.train.distributed import DistContext


def job_of(ctx: Context, dist: DistContext | None) -> DistContext:
    """The job this stage runs in: the one `distributed_job` joined, or one process on the profile's device."""
    return dist if dist is not None else DistContext(device=ctx.device)


@contextmanager
def main_run(settings: Settings, dist: DistContext | None, **run: Any) -> Iterator[RunTracker | NullRunTracker]:
    """`start_run(settings, **run)` on rank 0, recording the job's world size: a job of W processes is one MLflow
    run, not W. The other ranks get a tracker that records nothing."""
    if dist is not None and not dist.is_main:
        yield NullRunTracker()
        return
    with start_run(settings, **run) as tracker:
        tracker.log_params({"world_size": dist.world_size if dist is not None else 1})
        yield tracker
