"""One trial of a study: distil a student with the suggested hyperparameters for a fixed budget, score FD'.

Free of Optuna and MLflow: the orchestrator (dkdm.tuning.study) passes `report(step, value) -> prune?` and a Tracker.
Intermediate FD' runs in the trainer's eval hook on rank 0; the prune decision is broadcast to every rank
after each stretch of training, so all ranks stop together. Everything a trial builds is released before it
returns (models, pool, optimizer state, cached CUDA blocks), whatever the outcome.
"""
from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dkdm.tuning.space import TrialParams, student_config
from training.distill.config import DistillConfig
from training.train.distributed import DistContext
from training.train.tracker import Tracker

if TYPE_CHECKING:
    from training.eval.extractor import FeatureExtractor
    from training.eval.stats import ReferenceStats
    from training.train.trainer import Trainer

Report = Callable[[int, float], bool]


class TrialPrunedAt(Exception):
    """The pruner stopped the trial after the evaluation at `step` (raised on every rank)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"pruned at step {step}")
        self.step = step


class TrialFailure(Exception):
    """A trial that cannot give a score (non-finite loss or FD', out of memory, a crash); the study goes on."""


@dataclass(frozen=True)
class TrialBudget:
    iterations: int
    eval_every: int
    eval_samples: int
    final_samples: int
    eval_batch_size: int
    eval_seed: int
    max_skipped_fraction: float

    def checkpoints(self) -> list[int]:
        """The steps where training pauses for the prune decision (every eval, and the end)."""
        marks = list(range(self.eval_every, self.iterations + 1, self.eval_every))
        return marks if marks and marks[-1] == self.iterations else [*marks, self.iterations]


@dataclass
class TuneInputs:
    """What every trial of a worker shares, loaded once: teacher, diffusions, feature space, FD' reference."""

    teacher: nn.Module
    teacher_diffusion: Any
    student_diffusion: Any
    eval_diffusion: Any
    diffusion_config: dict[str, Any]
    extractor: FeatureExtractor
    teacher_stats: ReferenceStats
    image_shape: tuple[int, int, int]
    metric: str
    student_preset: str
    base_config: DistillConfig
    device: torch.device


@dataclass
class TrialOutcome:
    value: float
    steps: int
    skipped_steps: int
    intermediate: dict[int, float] = field(default_factory=dict)
    num_parameters: int = 0
    checkpoint: Path | None = None


def trial_config(base: DistillConfig, params: TrialParams, budget: TrialBudget) -> DistillConfig:
    """The run config of one trial: the profile's distillation settings with the trial's point and budget."""
    values = base.model_dump()
    values.update(
        method=params.method, lr=params.lr, iterations=budget.iterations, eval_every=budget.eval_every,
        log_every=min(base.log_every, budget.iterations), checkpoint_every=None, select_metric=None,
        early_stop_patience=None, data_fraction=None, synthetic_size=None,
    )
    if params.rho is not None:
        values["rho"] = params.rho
    return DistillConfig(**values)


def train_in_stretches(ctx: DistContext, checkpoints: list[int], advance: Callable[[int], int],
                       prune_now: Callable[[], bool]) -> None:
    """Train up to each checkpoint, then share rank 0's prune decision; every rank raises TrialPrunedAt together.

    `advance(until)` trains (collectively) and returns the step reached; `prune_now()` is asked on rank 0 only.
    """
    for until in checkpoints:
        step = advance(until)
        if bool(ctx.broadcast_object(prune_now() if ctx.is_main else None)):
            raise TrialPrunedAt(step)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fd_metric(inputs: TuneInputs, budget: TrialBudget, n_samples: int) -> Callable[[int, nn.Module], dict[str, float]]:
    from training.eval import make_fd_metric

    channels, size = inputs.image_shape[0], inputs.image_shape[1]
    return make_fd_metric(inputs.extractor, inputs.teacher_stats, inputs.eval_diffusion, n_samples=n_samples,
                          batch_size=budget.eval_batch_size, seed=budget.eval_seed, device=inputs.device,
                          metric_name=inputs.metric, image_size=size, channels=channels)


class TrialRunner:
    """Runs trials on one rank; rank 0 reports and scores, every rank trains."""

    def __init__(self, inputs: TuneInputs, budget: TrialBudget, ctx: DistContext) -> None:
        self.inputs = inputs
        self.budget = budget
        self.ctx = ctx

    def run(self, params: TrialParams, *, report: Report | None = None, tracker: Tracker | None = None,
            save_dir: Path | None = None, provenance: dict[str, Any] | None = None) -> TrialOutcome:
        """Train, pausing at each evaluation for the prune decision; raises TrialPrunedAt or TrialFailure."""
        failure: str | None = None
        try:
            return self._run(params, report, tracker, save_dir, provenance or {})
        except (TrialPrunedAt, TrialFailure):
            raise
        except torch.cuda.OutOfMemoryError as err:
            failure = f"out of memory: {str(err).splitlines()[0][:200]}"
        except (RuntimeError, ValueError, ArithmeticError) as err:
            failure = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
        finally:
            release_memory(self.inputs.device)
        # Raised outside the except block so the traceback (and the tensors its frames hold) is already gone.
        raise TrialFailure(failure)

    def _run(self, params: TrialParams, report: Report | None, tracker: Tracker | None, save_dir: Path | None,
             provenance: dict[str, Any]) -> TrialOutcome:
        from training.distill import build_run
        from training.models import create_model

        inputs, budget, ctx = self.inputs, self.budget, self.ctx
        config = trial_config(inputs.base_config, params, budget)
        model_config = student_config(inputs.student_preset, params.width)
        torch.manual_seed(config.seed)  # the student's initial weights: the same for every trial of one width
        student = create_model(model_config)
        num_parameters = sum(p.numel() for p in student.parameters())
        intermediate: dict[int, float] = {}
        decision = {"prune": False}
        intermediate_fd = _fd_metric(inputs, budget, budget.eval_samples) if ctx.is_main else None

        def eval_fn(step: int, model: nn.Module) -> dict[str, float]:
            assert intermediate_fd is not None  # the trainer calls eval_fn on rank 0 only
            metrics = intermediate_fd(step, model)
            value = float(metrics[inputs.metric])
            intermediate[step] = value
            if report is not None:
                decision["prune"] = bool(report(step, value))
            return metrics

        trainer = build_run(
            config, student=student, student_diffusion=inputs.student_diffusion, image_shape=inputs.image_shape,
            device=inputs.device, teacher=inputs.teacher, teacher_diffusion=inputs.teacher_diffusion,
            tracker=tracker, eval_fn=eval_fn, ctx=ctx, run_meta={"tune": provenance},
        )
        try:
            train_in_stretches(ctx, budget.checkpoints(), lambda until: trainer.run(until=until).step,
                               lambda: decision["prune"])
            skipped = trainer.skipped_steps
            if skipped > budget.max_skipped_fraction * trainer.step:
                raise TrialFailure(f"non-finite loss in {skipped} of {trainer.step} steps (lr={params.lr:.3g})")
            value, checkpoint = math.nan, None
            if ctx.is_main:
                trainer.ema.model.eval()
                value = float(_fd_metric(inputs, budget, budget.final_samples)(trainer.step, trainer.ema.model)
                              [inputs.metric])
                if not math.isfinite(value):
                    raise TrialFailure(f"final {inputs.metric} is not finite ({value})")
                if tracker is not None:
                    tracker.log_metrics({inputs.metric: value}, trainer.step)
                if save_dir is not None:
                    checkpoint = self._save(save_dir, trainer, model_config, provenance)
            return TrialOutcome(value, trainer.step, skipped, dict(intermediate), num_parameters, checkpoint)
        finally:
            # A raised exception's traceback keeps this frame alive: drop the student, pool and optimizer now.
            trainer = student = None  # noqa: F841

    def _save(self, save_dir: Path, trainer: Trainer, model_config: dict[str, Any], provenance: dict[str, Any]) -> Path:
        from training.models import save_checkpoint

        save_dir.mkdir(parents=True, exist_ok=True)
        return save_checkpoint(save_dir / "student.safetensors", trainer.model, model_config=model_config,
                               diffusion_config=self.inputs.diffusion_config, provenance=provenance,
                               ema_model=trainer.ema.model)
