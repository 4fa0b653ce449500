"""Typed trainer settings. Import-light (pydantic only): the platform embeds these models in its settings."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """Optimisation, EMA, precision, evaluation and checkpoint cadence of one training run.

    `batch_size` is per process; under torchrun the global batch is batch_size x world size.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(1000, gt=0, description="optimizer steps (skipped NaN steps count)")
    batch_size: int = Field(128, gt=0, description="per-process student batch")
    microbatch: int | None = Field(None, gt=0, description="split each batch into chunks of this size")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema_rate: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = Field(False, description="LDM form: rate_n = min(ema_rate, (1+n)/(10+n))")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; None = no clipping")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast on CUDA only")
    seed: int = Field(0, ge=0)
    log_every: int = Field(50, gt=0)
    eval_every: int | None = Field(None, gt=0)
    select_metric: str | None = Field(None, description="keep the checkpoint with the lowest value of this metric")
    early_stop_patience: int | None = Field(
        None, gt=0, description="stop after this many evaluations without improvement")
    checkpoint_every: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.microbatch is not None and self.microbatch > self.batch_size:
            raise ValueError(f"microbatch ({self.microbatch}) must not exceed batch_size ({self.batch_size})")
        for beta in self.adam_betas:
            if not 0 <= beta < 1:
                raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        if self.early_stop_patience is not None and (self.eval_every is None or self.select_metric is None):
            raise ValueError("early_stop_patience needs eval_every and select_metric")
        if self.select_metric is not None and self.eval_every is None:
            raise ValueError("select_metric needs eval_every")
        return self
