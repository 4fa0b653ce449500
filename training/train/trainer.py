"""The training loop shared by DKDM and the baselines: AdamW, EMA, autocast, microbatching, NaN guard,
periodic evaluation with keep-best, and exact-resume checkpoints.

What a step trains on and how it is scored are injected: a `BatchSource` (`next_batch()` plus its resume state)
and a loss function `(model, batch) -> dict(loss, mse, vb)` of per-sample tensors.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from training.train.config import TrainConfig
from training.train.distributed import DistContext
from training.train.ema import EMA
from training.train.precision import autocast_for
from training.train.rng import global_rng_state, set_global_rng_state
from training.train.state import (
    FORMAT,
    CheckpointError,
    atomic_save_tensors,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    split_prefix,
    with_prefix,
)
from training.train.tracker import NullTracker, Tracker

EvalFn = Callable[[int, nn.Module], dict[str, float]]
LossFn = Callable[[nn.Module, Any], dict[str, Tensor]]
RESUME_FILE = "resume.safetensors"
BEST_FILE = "best.safetensors"
LOSS_KEYS = ("loss", "mse", "vb")
# Settings a resumed run may change without breaking exactness of what was already trained.
RESUMABLE_CHANGES = {"iterations", "log_every", "eval_every", "checkpoint_every", "early_stop_patience"}


@dataclass
class TrainResult:
    step: int
    skipped_steps: int
    stopped_early: bool = False
    best_step: int | None = None
    best_value: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    source_stats: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Trains `model` for `config.iterations` optimizer steps on batches from `source`.

    Under torchrun (`ctx.enabled`) the model is wrapped in DDP; each rank has its own source (its pool shard),
    so the global batch is batch_size x world size. Only rank 0 writes files and talks to the tracker.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        source: Any,
        loss_fn: LossFn,
        *,
        device: torch.device | str,
        out_dir: str | Path | None = None,
        tracker: Tracker | None = None,
        eval_fn: EvalFn | None = None,
        ctx: DistContext | None = None,
        run_meta: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.ctx = ctx or DistContext(device=self.device)
        self.config = config
        self.model = model.to(self.device).train()
        self.source = source
        self.loss_fn = loss_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.tracker = tracker if (tracker is not None and self.ctx.is_main) else NullTracker()
        self.eval_fn = eval_fn
        self.run_meta = run_meta or {}
        self.ema = EMA(self.model, config.ema_rate, warmup=config.ema_warmup)
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net: nn.Module = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.step = 0
        self.skipped_steps = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.last_eval: dict[str, float] = {}
        # Every metric logged so far, kept in the resume state: a resumed run hands the tracker its whole history
        # (a store that lost the last records before a crash, or a new run, gets them; a loss curve is complete).
        self.history: list[tuple[int, dict[str, float]]] = []
        self._window = torch.zeros(len(LOSS_KEYS) + 1, dtype=torch.float64, device=self.device)

    # ------------------------------------------------------------------ one step

    def _microbatches(self, n: int) -> list[tuple[int, int]]:
        size = self.config.microbatch or n
        return [(start, min(size, n - start)) for start in range(0, n, size)]

    def train_step(self) -> bool:
        """One optimizer step (or a skipped one on a non-finite loss); returns whether it was applied."""
        batch = self.source.next_batch()
        n = len(batch)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64, device=self.device)
        chunks = self._microbatches(n)
        for j, (start, length) in enumerate(chunks):
            part = batch.narrow(start, length) if len(chunks) > 1 else batch
            # Gradients are all-reduced once per step, on the last microbatch.
            sync = (self.net.no_sync() if isinstance(self.net, DistributedDataParallel) and j < len(chunks) - 1
                    else contextlib.nullcontext())
            with sync:
                with autocast_for(self.device, self.config.precision):
                    losses = self.loss_fn(self.net, part)
                (losses["loss"].float().mean() * (length / n)).backward()
            sums += torch.stack([losses[k].detach().double().sum() for k in LOSS_KEYS])
        bad = (~torch.isfinite(sums[0])).to(torch.float64).reshape(1)
        applied = not bool(self.ctx.all_reduce_sum(bad).item())
        if applied and self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            applied = bool(torch.isfinite(norm))
        if applied:
            self.optimizer.step()
            self.ema.update(self.model)
            self._window += torch.cat([sums, sums.new_tensor([n])])
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
        self.step += 1
        return applied

    # ------------------------------------------------------------------ the loop

    def run(self, *, until: int | None = None) -> TrainResult:
        """Train up to `until` (default: config.iterations), evaluating and checkpointing on schedule."""
        stop_at = min(until or self.config.iterations, self.config.iterations)
        cfg = self.config
        if self.step == 0:
            self.tracker.log_params({f"train.{k}": v for k, v in cfg.model_dump().items()})
        stopped_early = False
        while self.step < stop_at:
            self.train_step()
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                self._log_window()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self._evaluate():
                stopped_early = True
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if stopped_early:
                break
        if self.step == cfg.iterations or stopped_early:
            self.save_checkpoint()
        return TrainResult(self.step, self.skipped_steps, stopped_early, self.best_step, self.best_value,
                           dict(self.last_eval), self.source.stats())

    def _log_window(self) -> None:
        window = self.ctx.all_reduce_sum(self._window.clone())
        self._window.zero_()
        count = float(window[-1])
        metrics = {f"train/{k}": float(window[i]) / count for i, k in enumerate(LOSS_KEYS)} if count else {}
        metrics["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["train/skipped_steps"] = float(self.skipped_steps)
        metrics.update({f"train/{k}": v for k, v in self.source.stats().items()})
        self._log(metrics)

    def _log(self, metrics: dict[str, float]) -> None:
        self.history.append((self.step, metrics))
        self.tracker.log_metrics(metrics, self.step)

    def _evaluate(self) -> bool:
        """Run eval_fn on the EMA model (rank 0), keep the best; returns whether to stop early."""
        if self.eval_fn is None:
            return False
        stop = False
        if self.ctx.is_main:
            self.ema.model.eval()
            metrics = {k: float(v) for k, v in self.eval_fn(self.step, self.ema.model).items()}
            self.last_eval = metrics
            self._log({f"eval/{k}": v for k, v in metrics.items()})
            name = self.config.select_metric
            if name is not None:
                if name not in metrics:
                    raise KeyError(f"eval_fn returned {sorted(metrics)}, without the select_metric {name!r}")
                value = metrics[name]
                if math.isfinite(value) and (self.best_value is None or value < self.best_value):
                    self.best_value, self.best_step, self.evals_since_best = value, self.step, 0
                    self._save_best(metrics)
                else:
                    self.evals_since_best += 1
                patience = self.config.early_stop_patience
                stop = patience is not None and self.evals_since_best >= patience
        return bool(self.ctx.broadcast_object(stop))

    # ------------------------------------------------------------------ files

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.out_dir is None:
            return
        tensors = {**with_prefix(self.ema.model.state_dict(), "ema"), **with_prefix(self.model.state_dict(), "student")}
        meta = {"format": "dkdm-best/1", "step": self.step, "metrics": metrics, "run": self.run_meta}
        atomic_save_tensors(self.out_dir / BEST_FILE, tensors, meta)

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Write the full training state (collective under torchrun; rank 0 writes)."""
        if path is None:
            if self.out_dir is None:
                return None
            path = self.out_dir / RESUME_FILE
        per_rank = {**with_prefix(self.source.state_tensors(), "source"),
                    **with_prefix(global_rng_state(self.device), "rng")}
        stacked = {k: self.ctx.gather_stacked(v) for k, v in per_rank.items()}
        if self.ctx.is_main:
            optim_tensors, optim_meta = optimizer_to_flat(self.optimizer)
            tensors = {
                **with_prefix(self.model.state_dict(), "student"),
                **with_prefix(self.ema.model.state_dict(), "ema"),
                **with_prefix(optim_tensors, "optim"),
                **with_prefix({k: v for k, v in stacked.items() if v is not None}, "rank"),
            }
            meta = {
                "format": FORMAT,
                "step": self.step,
                "skipped_steps": self.skipped_steps,
                "ema_updates": self.ema.num_updates,
                "best_value": self.best_value,
                "best_step": self.best_step,
                "evals_since_best": self.evals_since_best,
                "last_eval": self.last_eval,
                "world_size": self.ctx.world_size,
                "optimizer": optim_meta,
                "config": self.config.model_dump(mode="json"),
                "run": self.run_meta,
                "history": [[step, metrics] for step, metrics in self.history],
            }
            atomic_save_tensors(path, tensors, meta)
        self.ctx.barrier()
        return Path(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything `save_checkpoint` wrote; the run continues bit-exactly on the same hardware."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a dkdm training state (format {meta.get('format')!r})")
        if meta["world_size"] != self.ctx.world_size:
            raise CheckpointError(f"{path} was written by {meta['world_size']} processes, this run has "
                                  f"{self.ctx.world_size}; resume with {meta['world_size']} processes, or delete "
                                  f"{Path(path).parent} to start this run over")
        now = self.config.model_dump(mode="json")
        changed = sorted(k for k in set(now) | set(meta["config"])
                         if k not in RESUMABLE_CHANGES and now.get(k) != meta["config"].get(k))
        if changed:
            raise CheckpointError(f"{path} was written with different settings ({', '.join(changed)})")
        self.model.load_state_dict(split_prefix(tensors, "student"))
        self.ema.model.load_state_dict(split_prefix(tensors, "ema"))
        self.ema.num_updates = int(meta["ema_updates"])
        optimizer_from_flat(self.optimizer, split_prefix(tensors, "optim"), meta["optimizer"])
        # A copy, not a view: Generator.set_state reads a state tensor from the start of its storage, so rank r > 0
        # would restore rank 0's bytes shifted (or an invalid state) from a view at offset r.
        mine = {k: v[self.ctx.rank].clone() for k, v in split_prefix(tensors, "rank").items()}
        self.source.load_state_tensors(split_prefix(mine, "source"))
        set_global_rng_state(self.device, split_prefix(mine, "rng"))
        self.step = int(meta["step"])
        self.skipped_steps = int(meta["skipped_steps"])
        self.best_value, self.best_step = meta["best_value"], meta["best_step"]
        self.evals_since_best = int(meta["evals_since_best"])
        self.last_eval = dict(meta["last_eval"])
        self.history = [(int(step), dict(metrics)) for step, metrics in meta.get("history", [])]
        for step, metrics in self.history:
            self.tracker.log_metrics(metrics, step)

    def resume_if_possible(self) -> bool:
        """Load `<out_dir>/resume.safetensors` if it exists (stray temp files of a crashed write are ignored)."""
        if self.out_dir is None or not (self.out_dir / RESUME_FILE).is_file():
            return False
        self.load_checkpoint(self.out_dir / RESUME_FILE)
        return True


def load_best_weights(path: str | Path, model: nn.Module, *, ema: bool = True) -> dict[str, Any]:
    """Load the EMA (or raw) weights of a keep-best file into `model`; returns its metadata (step, metrics)."""
    tensors, meta = load_tensors(path)
    model.load_state_dict(split_prefix(tensors, "ema" if ema else "student"))
    return meta
