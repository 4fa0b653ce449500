"""Training shared by the teacher and student stages of either space: build the run, resume, train, write the
checkpoint."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dkdm.console import Context
from dkdm.settings import Settings
from dkdm.spaces import Space, space_for
from dkdm.stages.common import WORK_DIR, clear_work_dir, work_dir, write_csv
from dkdm.tracking import NullRunTracker, RunTracker
from dkdm.tracking_resume import RUN_ID_KEY
from training.distill.config import DistillConfig
from training.distill.sources import Encoder
from training.train.distributed import DistContext
from training.train.tracker import Tracker
from training.train.trainer import EvalFn, Trainer

LOSS_COLUMNS = ("step", "loss", "mse", "vb")


class LossLog:
    """A Tracker that forwards everything and also keeps train/loss per logged step as CSV (for `dvc plots`)."""

    def __init__(self, inner: Tracker, csv_path: Path) -> None:
        self.inner = inner
        self.rows: list[dict[str, float]] = []
        self.csv_path = csv_path

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.inner.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        if "train/loss" in metrics:
            self.rows.append({"step": step, **{k: metrics.get(f"train/{k}", float("nan")) for k in LOSS_COLUMNS[1:]}})

    def log_artifact(self, path: str | Path) -> None:
        self.inner.log_artifact(path)

    def write(self) -> Path:
        return write_csv(self.csv_path, LOSS_COLUMNS, self.rows)


def report_weights(tracker: RunTracker | NullRunTracker, dist: DistContext | None, digest: str) -> None:
    """Each rank states the sha256 of its final weights on stderr; rank 0 also tags the run with every rank's."""
    dist = dist or DistContext()
    sys.stderr.write(f"dkdm: rank {dist.rank} of {dist.world_size} weights sha256 {digest}\n")
    digests = dist.all_gather_object(digest)
    if dist.is_main:
        tracker.set_tags({f"dkdm.weights_sha256.rank{r}": d for r, d in enumerate(digests)})


def run_key(name: str, config: DistillConfig, extra: Mapping[str, Any]) -> str:
    """A work folder per exact configuration, so a stale resume state never meets a changed run."""
    blob = json.dumps({"config": config.model_dump(mode="json"), **extra}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def training_folder(space: Space, name: str, preset: str, config: DistillConfig,
                    extra_key: Mapping[str, Any] | None) -> Path:
    """Where train_network keeps the resume state of this exact run (not created here)."""
    return WORK_DIR / run_key(name, config,
                              {"preset": preset, "diffusion": space.diffusion_config(), **(extra_key or {})})


def resume_state_file(settings: Settings, name: str, preset: str, config: DistillConfig,
                      extra_key: Mapping[str, Any] | None = None) -> Path:
    """The resume checkpoint of this run; start_run(resume_state=...) reattaches to the MLflow run it names."""
    from training.train.trainer import RESUME_FILE

    return training_folder(space_for(settings), name, preset, config, extra_key) / RESUME_FILE


def restore_best_ema(trainer: Trainer, folder: Path) -> int | None:
    """With early stopping (select_metric), load the best evaluation's EMA weights into the trainer's EMA model;
    returns that step, or None when the run kept no best (its final EMA weights stand)."""
    from training.train.trainer import BEST_FILE, load_best_weights

    if not (folder / BEST_FILE).is_file():
        return None
    return load_best_weights(folder / BEST_FILE, trainer.ema.model, ema=True).get("step")


def train_network(
    ctx: Context,
    space: Space,
    *,
    name: str,
    preset: str,
    config: DistillConfig,
    out_file: Path,
    tracker: Tracker,
    loss_csv: Path,
    provenance: Mapping[str, Any],
    teacher: nn.Module | None = None,
    pool_path: Path | None = None,
    real_images: Tensor | None = None,
    synthetic_images: Tensor | None = None,
    encode: Encoder | None = None,
    eval_fn: EvalFn | None = None,
    extra_key: Mapping[str, Any] | None = None,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Train `preset` with `config` in `space` and save EMA + raw weights to `out_file`.

    Resumes from `.dkdm/work/<name>-<hash>/` after an interruption; with early stopping the best EMA weights
    (by config.select_metric) become the checkpoint. Returns a small summary (steps, seconds, losses).

    Under a job of W processes (`dist`) the student is one DDP model: each rank draws its own batch of
    config.batch_size from its own source (its own pool of round(rho*T)*b states), so the global batch is
    batch_size x W; only rank 0 writes files and talks to `tracker`. Every rank returns the sha256 of its final
    weights (`weights_sha256`: equal on all ranks, or DDP went wrong).
    """
    import torch

    from training.distill.run import build_run
    from training.models import create_model, get_preset, save_checkpoint
    from training.train.state import weights_sha256

    torch.manual_seed(config.seed)  # weight initialisation; the trainer seeds everything after it
    student = create_model(get_preset(preset))
    diffusion_config = space.diffusion_config()
    diffusion = space.process(diffusion_config, ctx.device)
    folder = work_dir(training_folder(space, name, preset, config, extra_key).name)
    dist = dist or DistContext(device=ctx.device)
    log = LossLog(tracker, loss_csv)
    trainer = build_run(
        config, student=student, student_diffusion=diffusion, image_shape=space.model_shape(), device=ctx.device,
        teacher=teacher, teacher_diffusion=diffusion if teacher is not None else None, pool_path=pool_path,
        real_images=real_images, synthetic_images=synthetic_images, encode=encode, out_dir=folder, tracker=log,
        eval_fn=eval_fn, ctx=dist,
        run_meta={"name": name, "preset": preset, "space": space.name, RUN_ID_KEY: getattr(tracker, "run_id", "")},
    )
    pool = getattr(trainer.source, "pool", None)
    layout = {"world_size": dist.world_size, "batch_size_per_rank": config.batch_size,
              "batch_size_global": config.batch_size * dist.world_size}
    if pool is not None:
        layout["pool_states_per_rank"] = len(pool)
    tracker.log_params(layout)
    resumed = trainer.resume_if_possible()
    start_step = trainer.step
    started = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - started
    best_step = restore_best_ema(trainer, folder)  # every rank: the hashes below must agree
    digest = weights_sha256(trainer.model, trainer.ema.model)  # after the best EMA: what the checkpoint holds
    if dist.is_main:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out_file, trainer.model, model_config=get_preset(preset), diffusion_config=diffusion_config,
                        provenance={**provenance, "steps": result.step, "best_step": best_step,
                                    **{k: v for k, v in layout.items() if k != "pool_states_per_rank"}},
                        ema_model=trainer.ema.model)
        log.write()
        clear_work_dir(folder)  # finished: the resume state is no longer needed
    done = result.step - start_step
    return {
        "steps": result.step,
        "resumed_from": start_step if resumed else None,
        "seconds": seconds,
        "train_seconds_per_100_iters": 100.0 * seconds / done if done else None,
        "skipped_steps": result.skipped_steps,
        "stopped_early": result.stopped_early,
        "best_step": best_step,
        "final_loss": log.rows[-1]["loss"] if log.rows else None,
        "source_stats": result.source_stats,
        "weights_sha256": digest,
        **layout,
    }
