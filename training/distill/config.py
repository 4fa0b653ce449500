"""Typed distillation settings. Import-light (pydantic only): the platform embeds these models in its settings."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.train.config import TrainConfig

Method = Literal["dynamic", "shuffled", "iterative", "data_free", "data_limited", "data_based"]
POOL_METHODS = ("dynamic", "shuffled", "iterative")
DATASET_METHODS = ("data_free", "data_limited", "data_based")
PoolDType = Literal["float32", "float16", "bfloat16"]


class PoolPrep(BaseModel):
    """How the pool's states are reached (issue 18). `paper`: each state walks the teacher's full ancestral chain
    from T down to its end step e (about T/2 teacher calls per state). `respaced`: at most `steps` teacher calls per
    state, on an evenly spaced grid from T that ends exactly at e; `sampler` says how a hop of several steps is
    taken (ancestral: the posterior q(x_b | x_a, x0) with its own variance; ddim: eta 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    procedure: Literal["paper", "respaced"] = Field("paper", description="paper | respaced (cheaper start)")
    steps: int = Field(25, ge=1, description="respaced: teacher calls per state at most (K)")
    sampler: Literal["ancestral", "ddim"] = Field("ancestral", description="respaced: how a hop of many steps goes")

    def max_hops(self) -> int | None:
        """Teacher calls per state at most; None = the full chain."""
        return self.steps if self.procedure == "respaced" else None


class PoolConfig(BaseModel):
    """What defines a prepared pool: size, teacher batch, storage precision and the teacher's clamping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rho: float = Field(0.4, gt=0, description="pool size = round(rho * T) * batch_size (per process)")
    batch_size: int = Field(128, gt=0, description="per-process student batch the pool is sized for")
    teacher_batch_size: int = Field(256, gt=0, description="teacher batch for preparation and stepping")
    pool_dtype: PoolDType = Field("float32", description="storage precision of the pool images")
    clip_denoised: bool = Field(True, description="clamp the teacher's x0 estimate (pixel: true, latent: false)")
    seed: int = Field(0, ge=0)
    save_every_s: float = Field(300.0, gt=0, description="seconds between partial saves while preparing")
    prep: PoolPrep = Field(PoolPrep(), description="how the states are reached (the paper's full chains by default)")

    def num_entries(self, num_timesteps: int) -> int:
        """Entries per process: round(rho*T) * b, as the official `round(BATCH*T)*b`."""
        rounds = round(self.rho * num_timesteps)
        if rounds < 1:
            raise ValueError(f"rho={self.rho} with T={num_timesteps} gives an empty pool (round(rho*T) = 0)")
        return rounds * self.batch_size


class DistillConfig(TrainConfig):
    """One distillation (or baseline) run: the source of (x_t, t) plus the trainer settings."""

    method: Method = "dynamic"
    rho: float = Field(0.4, gt=0, description="dynamic pool size = round(rho * T) * batch_size")
    teacher_batch_size: int = Field(256, gt=0, description="teacher batch for pool preparation / chunk in training")
    discard_prob: float = Field(0.0, ge=0, lt=1, description="probability p of dropping a teacher batch")
    pool_dtype: PoolDType = "float32"
    pool_prep: PoolPrep = Field(PoolPrep(), description="how the dynamic pool's states are reached (issue 18)")
    clip_denoised: bool = Field(True, description="teacher clamps x0 (pixel DKDM); false for latent teachers")
    data_fraction: float | None = Field(None, gt=0, lt=1, description="real fraction P for data_limited")
    synthetic_size: int | None = Field(None, gt=0, description="synthetic set size (default: real set size)")
    synthetic_respacing: str = Field("", description="teacher sampling steps for the synthetic set ('' = all T)")
    random_flip: bool = Field(False, description="baselines: mirror each training image left-right with p = 1/2")

    @model_validator(mode="after")
    def _method_fields(self) -> DistillConfig:
        if self.method == "data_limited" and self.data_fraction is None:
            raise ValueError("data_fraction is required for method 'data_limited' (e.g. 0.1)")
        if self.method != "data_limited" and self.data_fraction is not None:
            raise ValueError(f"data_fraction only applies to method 'data_limited', not {self.method!r}")
        if self.discard_prob > 0 and self.method not in POOL_METHODS:
            raise ValueError(f"discard_prob only applies to {POOL_METHODS}, not {self.method!r}")
        if self.random_flip and self.method in POOL_METHODS:
            # DKDM's sources hold no images: the teacher's states are never augmented (the official code).
            raise ValueError(f"random_flip only applies to {DATASET_METHODS}, not {self.method!r}")
        return self

    def pool_config(self) -> PoolConfig:
        """The preparation settings implied by this run (shuffled uses a pool of exactly one batch)."""
        return PoolConfig(
            rho=self.rho,
            batch_size=self.batch_size,
            teacher_batch_size=self.teacher_batch_size,
            pool_dtype=self.pool_dtype,
            clip_denoised=self.clip_denoised,
            seed=self.seed,
            prep=self.pool_prep,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{name: getattr(self, name) for name in TrainConfig.model_fields})
