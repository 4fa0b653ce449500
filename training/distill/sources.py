"""Teacher data sources (the paper's Sec. 3.3; discard: supplementary §11): iterative, shuffled iterative,
dynamic iterative, random discard.

All three are one mechanism over a pool of (s, x) entries: each iteration selects entries (all of them, or |B|
drawn uniformly without replacement), recycles finished ones (s == 0) to fresh noise at s = T, runs one teacher
step at t = s - 1, and writes (t, x_{t-1}) back in place. The sources differ only in the pool they start from
and in how they select:

- iterative: |B| entries of pure noise, all selected, so the batch walks T-1 .. 0 in lock-step and restarts;
- shuffled:  |B| prepared entries (uniform t), all selected, fixed composition;
- dynamic:   round(rho*T)*|B| prepared entries, |B| selected uniformly each iteration.

Random discard follows the official code (`prob` = 1 - p): a dropped batch is stepped by the teacher but neither
trained on nor written back; the *same* entries, advanced one step, are the next iteration's batch, and the
advanced state is written back when a batch is finally kept. So discarding costs teacher steps, never pool
progress, and the pool never holds a state the student skipped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

from training.distill.pool import Pool
from training.distill.teacher import TeacherStep


@dataclass
class TeacherBatch:
    """What the student trains on: the teacher's input, its index t, its p_mean_variance output and its step."""

    x_t: Tensor
    t: Tensor
    teacher_out: dict[str, Tensor]
    x_next: Tensor

    def __len__(self) -> int:
        return self.x_t.shape[0]

    def narrow(self, start: int, length: int) -> TeacherBatch:
        return TeacherBatch(
            self.x_t[start : start + length],
            self.t[start : start + length],
            {k: v[start : start + length] for k, v in self.teacher_out.items()},
            self.x_next[start : start + length],
        )


@dataclass
class DataBatch:
    """Ordinary diffusion training: clean images plus the t and noise drawn for them."""

    x_start: Tensor
    t: Tensor
    noise: Tensor

    def __len__(self) -> int:
        return self.x_start.shape[0]

    def narrow(self, start: int, length: int) -> DataBatch:
        return DataBatch(*(getattr(self, f.name)[start : start + length] for f in fields(self)))


class BatchSource(Protocol):
    """What the trainer pulls batches from; its state goes into the resume checkpoint."""

    def next_batch(self) -> TeacherBatch | DataBatch: ...

    def state_tensors(self) -> dict[str, Tensor]: ...

    def load_state_tensors(self, state: dict[str, Tensor]) -> None: ...

    def stats(self) -> dict[str, float]: ...


class PoolSource:
    """Selects, recycles, steps with the teacher and writes back; see the module docstring.

    `select_generator` (CPU) draws indices and discard decisions; `noise_generator` (on the pool's device)
    draws fresh and ancestral noise. Both are saved with the pool for exact resume.
    """

    def __init__(
        self,
        pool: Pool,
        teacher_step: TeacherStep,
        *,
        batch_size: int,
        select_all: bool,
        discard_prob: float = 0.0,
        select_generator: torch.Generator,
        noise_generator: torch.Generator,
    ) -> None:
        if select_all and len(pool) != batch_size:
            raise ValueError(f"a lock-step source needs a pool of exactly batch_size={batch_size}, got {len(pool)}")
        if len(pool) < batch_size:
            raise ValueError(f"pool of {len(pool)} entries is smaller than batch_size={batch_size}")
        if not 0 <= discard_prob < 1:
            raise ValueError(f"discard_prob must lie in [0, 1), got {discard_prob}")
        self.pool = pool
        self.step = teacher_step
        self.batch_size = batch_size
        self.select_all = select_all
        self.discard_prob = discard_prob
        self.select_generator = select_generator
        self.noise_generator = noise_generator
        self.device = pool.x.device
        self.teacher_batches = 0
        self.discarded = 0
        # A dropped batch waiting to be stepped again: (indices, x, s) with x at the advanced state.
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def _select(self) -> Tensor:
        if self.select_all:
            return torch.arange(self.batch_size, device=self.device)
        idx = torch.randperm(len(self.pool), generator=self.select_generator)[: self.batch_size]
        return idx.to(self.device)

    def _randn(self, shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=self.noise_generator, device=self.noise_generator.device).to(self.device)

    def next_batch(self) -> TeacherBatch:
        while True:
            if self._pending is None:
                idx = self._select()
                x, s = self.pool.x[idx].float(), self.pool.s[idx]
            else:
                idx, x, s = self._pending
            finished = s == 0
            fresh = self._randn(x.shape)
            x = torch.where(finished.view(-1, *([1] * (x.ndim - 1))), fresh, x)
            s = torch.where(finished, torch.full_like(s, self.pool.num_timesteps), s)
            t = s - 1
            out, x_next = self.step(x, t, self._randn(x.shape))
            self.teacher_batches += 1
            if self.discard_prob > 0 and float(torch.rand((), generator=self.select_generator)) < self.discard_prob:
                self.discarded += 1
                self._pending = (idx, x_next, t)
                continue
            self._pending = None
            self.pool.x[idx] = x_next.to(self.pool.x.dtype)
            self.pool.s[idx] = t
            return TeacherBatch(x, t, out, x_next)

    def stats(self) -> dict[str, float]:
        rate = self.discarded / self.teacher_batches if self.teacher_batches else 0.0
        return {"teacher_batches": float(self.teacher_batches), "discarded": float(self.discarded),
                "discard_rate": rate}

    def state_tensors(self) -> dict[str, Tensor]:
        if self._pending is not None:
            idx, x, s = self._pending
        else:  # fixed shapes either way, so ranks can be stacked in one checkpoint
            b = self.batch_size
            idx, x, s = (torch.zeros(b, dtype=torch.int64), torch.zeros((b, *self.pool.x.shape[1:])),
                         torch.zeros(b, dtype=torch.int64))
        return {
            "pool_x": self.pool.x, "pool_s": self.pool.s,
            "pending_idx": idx, "pending_x": x.float(), "pending_s": s,
            "counters": torch.tensor([self.teacher_batches, self.discarded, int(self._pending is not None)],
                                     dtype=torch.int64),
            "select_generator": self.select_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        if state["pool_x"].shape != self.pool.x.shape:
            raise ValueError(f"checkpoint pool has shape {tuple(state['pool_x'].shape)}, "
                             f"this run's pool {tuple(self.pool.x.shape)}")
        self.pool.x.copy_(state["pool_x"])
        self.pool.s.copy_(state["pool_s"])
        self.teacher_batches, self.discarded, has_pending = (int(v) for v in state["counters"])
        self._pending = None
        if has_pending:
            self._pending = (state["pending_idx"].to(self.device), state["pending_x"].to(self.device),
                             state["pending_s"].to(self.device))
        self.select_generator.set_state(state["select_generator"])
        self.noise_generator.set_state(state["noise_generator"])


Encoder = Callable[[Tensor], Tensor]


class DatasetSource:
    """Uniform-t batches of a fixed image set, reshuffled every epoch (baselines' ordinary training).

    `images` are uint8 in [0, 255] or float in [-1, 1], shape (N, C, H, W); they stay where they are and only
    each batch moves to `device`. With `encode` (latent data-based training) each batch is encoded under no_grad
    before t and noise are drawn for it, as LDM's training does every step; `stats()` counts the encoded images.
    With `random_flip` each sample of each batch is mirrored left-right with probability 1/2 (before encoding), the
    augmentation of the official baselines' image loader; the draw comes from `generator`, so it is seeded and
    resumes with the source's state. Off, nothing extra is drawn and the batch stream is unchanged.
    """

    def __init__(self, images: Tensor, num_timesteps: int, *, batch_size: int, device: torch.device,
                 generator: torch.Generator, noise_generator: torch.Generator, encode: Encoder | None = None,
                 random_flip: bool = False) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"dataset must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
        self.images = images
        self.num_timesteps = num_timesteps
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = generator
        self.noise_generator = noise_generator
        self.encode = encode
        self.random_flip = random_flip
        self.flipped = 0
        self._order = torch.randperm(images.shape[0], generator=generator)
        self._position = 0
        self.epochs = 0
        self.encoded = 0

    def _take(self, n: int) -> Tensor:
        picked: list[Tensor] = []
        while n:
            if self._position == len(self._order):
                self._order = torch.randperm(self.images.shape[0], generator=self.generator)
                self._position = 0
                self.epochs += 1
            part = self._order[self._position : self._position + n]
            self._position += part.numel()
            n -= part.numel()
            picked.append(part)
        return torch.cat(picked)

    def next_batch(self) -> DataBatch:
        x = self.images[self._take(self.batch_size)].to(self.device, non_blocking=True)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        if self.random_flip:
            mirror = (torch.rand(x.shape[0], generator=self.generator) < 0.5).to(self.device)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
            self.flipped += int(mirror.sum())
        if self.encode is not None:
            with torch.no_grad():
                x = self.encode(x).float()
            self.encoded += x.shape[0]
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), generator=self.generator).to(self.device)
        noise = torch.randn(x.shape, generator=self.noise_generator,
                            device=self.noise_generator.device).to(self.device)
        return DataBatch(x, t, noise)

    def stats(self) -> dict[str, float]:
        stats = {"epochs": float(self.epochs)}
        if self.encode is not None:
            stats["encoded_images"] = float(self.encoded)
        if self.random_flip:
            stats["flipped_images"] = float(self.flipped)
        return stats

    def state_tensors(self) -> dict[str, Tensor]:
        return {
            "order": self._order,
            "counters": torch.tensor([self._position, self.epochs, self.encoded], dtype=torch.int64),
            "generator": self.generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        self._order = state["order"].clone()
        counters = [int(v) for v in state["counters"]]
        self._position, self.epochs = counters[:2]
        self.encoded = counters[2] if len(counters) > 2 else 0  # resume states written before encoding was counted
        self.generator.set_state(state["generator"])
        self.noise_generator.set_state(state["noise_generator"])
