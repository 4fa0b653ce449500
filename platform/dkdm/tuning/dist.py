"""Trials under torchrun: rank 0 alone talks to the study storage and MLflow; the other ranks follow.

Rank 0 announces each trial (number and parameters) with a broadcast; every rank trains it (DDP), and the
prune decision rank 0 gets from Optuna reaches every rank through `TrialRunner`'s broadcast after each
evaluation. When rank 0's study ends it announces the stop, always (even on an error), so no rank waits.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dkdm.tuning.objective import TrialFailure, TrialPrunedAt
from training.train.distributed import DistContext

if TYPE_CHECKING:
    from dkdm.tuning.space import TrialParams

STOP = "stop"
TRIAL = "trial"


def announce(ctx: DistContext, number: int, params: TrialParams) -> None:
    ctx.broadcast_object((TRIAL, number, params))


@contextmanager
def leading(ctx: DistContext) -> Iterator[None]:
    """Rank 0's side: whatever happens inside, the followers are told to stop at the end."""
    try:
        yield
    finally:
        ctx.broadcast_object((STOP, None, None))


def follow(ctx: DistContext, run: Callable[[TrialParams], object]) -> list[tuple[int, str]]:
    """A non-zero rank's side: run each announced trial until rank 0 says stop; returns (number, outcome)."""
    seen: list[tuple[int, str]] = []
    while True:
        kind, number, params = ctx.broadcast_object(None)  # type: ignore[misc]
        if kind == STOP:
            return seen
        try:
            run(params)
            outcome = "COMPLETE"
        except TrialPrunedAt:
            outcome = "PRUNED"
        except TrialFailure:
            outcome = "FAIL"
        seen.append((int(number), outcome))
