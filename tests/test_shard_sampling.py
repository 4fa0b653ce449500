"""Sharded sampling's bookkeeping without processes: which batches a rank draws and how rank 0 puts them back, for
uneven shares and more ranks than batches; and the D' writer resuming from its work file. The same under 2 real
gloo processes, through the stages: tests/test_sharded_stages.py."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from training.diffusion import create_diffusion
from training.distill import load_synthetic, synthesize_dataset
from training.eval.shard import batch_rows, gather_batches, rank_batches
from training.models import create_model, get_preset


@dataclass(frozen=True)
class _Rank:
    """A rank of a pretend job: gather_stacked hands rank 0 what every rank would send."""

    rank: int
    world_size: int
    sent: list[torch.Tensor]

    enabled = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_stacked(self, tensor: torch.Tensor) -> torch.Tensor | None:
        assert all(t.shape == tensor.shape for t in self.sent), "every rank sends the same padded shape"
        return torch.stack(self.sent) if self.is_main else None


def _local(rank: int, world: int, n: int, batch: int) -> torch.Tensor:
    rows = [torch.empty(0, dtype=torch.int64)]
    for k in rank_batches(n, batch, _Rank(rank, world, [])):
        start, count = batch_rows(k, n, batch)
        rows.append(torch.arange(start, start + count))
    return torch.cat(rows)


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 2), (64, 10, 2), (7, 7, 3), (5, 2, 8), (128, 20, 4)])
def test_rank_zero_gets_every_item_once_in_order(n, batch, world):
    locals_ = [_local(r, world, n, batch) for r in range(world)]
    assert sorted(torch.cat(locals_).tolist()) == list(range(n)), "the ranks' batches partition the items"
    padded = []
    for r in range(world):  # what gather_batches pads each rank's share to before the collective
        share = math.ceil(math.ceil(n / batch) / world) * batch
        padded.append(torch.cat([locals_[r], torch.zeros(share - len(locals_[r]), dtype=torch.int64)]))
    assert torch.equal(gather_batches(locals_[0], n, batch, _Rank(0, world, padded)), torch.arange(n))
    assert gather_batches(locals_[-1], n, batch, _Rank(world - 1, world, padded)) is None


def test_an_interrupted_d_prime_resumes_to_the_same_set(tmp_path):
    torch.manual_seed(0)
    teacher = create_model(get_preset("ci-teacher"))
    diffusion = create_diffusion(steps=4, noise_schedule="cosine", learn_sigma=True)
    kwargs = {"image_shape": (1, 8, 8), "batch_size": 3, "device": "cpu", "seed": 5, "progress": False,
              "save_every_batches": 1}
    straight = load_synthetic(synthesize_dataset(teacher, diffusion, 10, tmp_path / "a.safetensors", **kwargs))

    calls = {"n": 0}

    def dies(x, t):
        calls["n"] += 1
        if calls["n"] > 2 * 4:  # two batches of 4 steps, then a kill
            raise KeyboardInterrupt("simulated kill")
        return teacher(x, t)

    dying = torch.nn.Module()
    dying.forward = dies  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        synthesize_dataset(dying, diffusion, 10, tmp_path / "b.safetensors", **kwargs)
    assert (tmp_path / "b.safetensors.partial").is_file()
    resumed = load_synthetic(synthesize_dataset(teacher, diffusion, 10, tmp_path / "b.safetensors", **kwargs))
    assert torch.equal(straight, resumed) and not (tmp_path / "b.safetensors.partial").exists()
