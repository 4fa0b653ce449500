"""The `tune:` settings section: search space, per-trial budget, pruner, storage and failure policy.

Import-light (pydantic only) so `dkdm.settings` can embed it as `Settings.tune`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from training.distill.config import POOL_METHODS, Method

PrunerName = Literal["median", "hyperband", "none"]
# Beside mlflow.db; the dashboard's discovery list (dkdm.dashboard_queries.studies) includes this name.
DEFAULT_STORAGE = "optuna.journal"


class TuneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = Field(
        DEFAULT_STORAGE,
        description="a file path = Optuna JournalStorage (safe for several local processes); "
        "postgresql://... for many workers on many hosts; sqlite:///... single machine, few workers",
    )
    iterations: int | None = Field(None, gt=0, description="student steps per trial (None = distill.train.iterations)")
    eval_every: int | None = Field(None, gt=0, description="intermediate FD' for pruning (None = iterations // 4)")
    eval_samples: int = Field(256, gt=1, description="samples of each intermediate FD'")
    final_samples: int = Field(512, gt=1, description="samples of the objective FD' at the end of a trial")
    eval_respacing: str | None = Field(None, description="sampling steps of the trial FD' (None = evaluate.respacing)")
    eval_batch_size: int = Field(256, gt=0)
    eval_seed: int = Field(3, ge=0, description="same noise for every trial, so trials differ by the model only")
    rho: tuple[float, float] = Field((0.01, 1.0), description="log-uniform range of rho (dynamic method)")
    lr: tuple[float, float] = Field((1e-5, 3e-3), description="log-uniform range of the learning rate")
    widths: list[int] | None = Field(None, description="student width choices (None = derived from the preset)")
    method_choice: bool = Field(False, description="also search the distillation method")
    methods: list[Method] = Field(default_factory=lambda: list(POOL_METHODS))
    pruner: PrunerName = "median"
    pruner_startup_trials: int = Field(2, ge=0, description="trials before the median pruner prunes anything")
    pruner_warmup_steps: int = Field(0, ge=0, description="median pruner: never prune before this step")
    sampler_startup_trials: int = Field(5, ge=1, description="random trials before TPE models the space")
    seed: int = Field(0, ge=0, description="TPE seed; worker k of a parallel study uses seed + k")
    heartbeat_interval_s: int = Field(60, gt=0, description="RDB storages: a running trial's heartbeat")
    grace_period_s: int = Field(180, gt=0, description="RDB storages: heartbeat silence that fails a trial")
    max_skipped_fraction: float = Field(0.1, ge=0, le=1, description="non-finite-loss steps that fail a trial")
    max_consecutive_failures: int = Field(5, gt=0, description="stop the worker after this many failed trials")
    register_best: bool = Field(True, description="register the best trial's student in the MLflow registry")
    out_dir: Path = Field(Path("outputs/tune"), description="trial students: <out_dir>/<study>/trial-<n>/")

    @field_validator("rho", "lr")
    @classmethod
    def _log_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"needs 0 < low <= high, got [{low}, {high}]")
        return value

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(w <= 0 for w in value)):
            raise ValueError(f"must be a non-empty list of positive widths, got {value}")
        return sorted(set(value)) if value else value

    @model_validator(mode="after")
    def _methods(self) -> TuneSettings:
        bad = [m for m in self.methods if m not in POOL_METHODS]
        if bad:
            raise ValueError(f"methods: only distillation methods {list(POOL_METHODS)} can be searched, got {bad}")
        if not self.methods:
            raise ValueError("methods: needs at least one method")
        return self
