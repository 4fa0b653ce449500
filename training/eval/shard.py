"""Sampling sharded over the ranks of one job, with the same result as one process.

The n items are cut into fixed batches of `batch_size` (batch k = items [k*b, (k+1)*b)); every batch draws its
noise from streams seeded by (seed, item or batch index) only, never by rank, so rank r may draw batches
r, r+W, r+2W, ... and rank 0 puts the gathered batches back in index order: W processes give exactly the images of
one process, in 1/W of the time.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from training.train.distributed import DistContext

SINGLE = DistContext()


def num_batches(num_items: int, batch_size: int) -> int:
    return -(-num_items // batch_size)


def rank_batches(num_items: int, batch_size: int, dist: DistContext | None = None) -> range:
    """Indices of the batches this rank draws (every W-th, starting at its rank)."""
    dist = dist or SINGLE
    return range(dist.rank, num_batches(num_items, batch_size), dist.world_size)


def batch_rows(index: int, num_items: int, batch_size: int) -> tuple[int, int]:
    """(first item, item count) of batch `index`; the last batch may be short."""
    start = index * batch_size
    return start, min(batch_size, num_items - start)


def gather_batches(local: Tensor, num_items: int, batch_size: int, dist: DistContext | None = None
                   ) -> Tensor | None:
    """This rank's batches (concatenated in its own order) -> all n items in index order on rank 0; None elsewhere.

    Ranks hold different counts (the short last batch, or one batch fewer), so each pads to the largest share
    before the collective; padding rows are dropped when the batches are put back in place.
    """
    dist = dist or SINGLE
    if not dist.enabled:
        return local
    world = dist.world_size
    share = num_batches(num_batches(num_items, batch_size), world) * batch_size
    padded = torch.zeros((share, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    stacked = dist.gather_stacked(padded)
    if stacked is None:
        return None
    out = torch.empty((num_items, *local.shape[1:]), dtype=local.dtype)
    for k in range(num_batches(num_items, batch_size)):
        start, count = batch_rows(k, num_items, batch_size)
        at = (k // world) * batch_size
        out[start : start + count] = stacked[k % world, at : at + count]
    return out


def sample_sharded(make_batch: Callable[[int, int], Tensor], num_items: int, batch_size: int,
                   dist: DistContext | None = None, *, on_batch: Callable[[int], None] | None = None
                   ) -> Tensor | None:
    """`make_batch(start, count)` for this rank's batches, gathered in order on rank 0 (None on other ranks).

    `make_batch` must depend on (start, count) only; that is what makes the result independent of W.
    """
    pieces = []
    for k in rank_batches(num_items, batch_size, dist):
        start, count = batch_rows(k, num_items, batch_size)
        pieces.append(make_batch(start, count).cpu())
        if on_batch is not None:
            on_batch(count)
    dist = dist or SINGLE
    if dist.enabled:
        # A rank with no batch (more ranks than batches) still needs the item shape for its padding: rank 0
        # always draws batch 0, so it tells the others.
        layout = dist.broadcast_object((tuple(pieces[0].shape[1:]), pieces[0].dtype) if dist.is_main else None)
        shape, dtype = layout  # type: ignore[misc]
        local = torch.cat(pieces) if pieces else torch.empty((0, *shape), dtype=dtype)
    else:
        local = torch.cat(pieces)
    return gather_batches(local, num_items, batch_size, dist)
