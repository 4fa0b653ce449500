"""What latent-space DKDM (the paper's LDM teachers, Table 9) adds to the engine; everything else is the pixel engine.

`LatentDiffusion` speaks the pixel process's interface, so the teacher step, pool, sources and losses are the
pixel ones (`training.distill.run.source_and_loss`). This module holds only what is latent-specific:

* the pool's memory in bytes (round(rho*T)*|B| latents, optionally half precision), logged when built;
* the first stage as an `Encoder` for the data-based baseline (it encodes every step, as LDM's training does;
  that cost is what Table 9 compares) and the data-limited mix (encoded once). Distillation never encodes;
* the data-free baseline's synthetic set: the teacher's DDIM-100 (eta 0) samples, stored as float16 latents.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training.diffusion.ldm import EpsModel, FirstStage, LatentDiffusion
from training.distill.baselines import load_synthetic, synthesize_dataset
from training.distill.config import DistillConfig
from training.distill.objective import LossFn, dkdm_loss_fn
from training.distill.pool import DTYPES, Pool, noise_pool, pool_nbytes, prepare_in_memory
from training.distill.run import source_and_loss
from training.distill.sources import BatchSource, DatasetSource, Encoder
from training.distill.teacher import DiffusionTeacherStep, TeacherStep
from training.train.distributed import DistContext
from training.train.precision import autocast_for

log = logging.getLogger(__name__)

__all__ = ["EncodingSource", "LatentTeacherStep", "build_latent_pool", "first_stage_encoder", "latent_dkdm_loss_fn",
           "latent_source_and_loss", "pool_nbytes", "synthesize_latents"]

SYNTHETIC_DDIM_STEPS = 100  # the paper's data-free latent baseline samples with DDIM-100, eta 0

# Earlier names of the shared engine pieces, as latent callers knew them: LDM teachers never clip x0, and data-based
# training is the dataset source with the first stage as its encoder.
LatentTeacherStep = functools.partial(DiffusionTeacherStep, clip_denoised=False)
EncodingSource = DatasetSource


def latent_dkdm_loss_fn() -> LossFn:
    """The DKDM loss of a fixed-variance latent student: eps MSE only (vb is zero); it does not depend on T."""
    return dkdm_loss_fn(LatentDiffusion())


def first_stage_encoder(first_stage: FirstStage, diffusion: LatentDiffusion, *, device: torch.device | str,
                        precision: str = "auto") -> Encoder:
    """Images in [-1, 1] -> the scaled latents the diffusion runs on (under autocast per `precision`)."""
    dev = torch.device(device)

    def encode(x: Tensor) -> Tensor:
        with autocast_for(dev, precision):
            return diffusion.encode_first_stage(first_stage, x).float()

    return encode


def build_latent_pool(step: TeacherStep, *, rho: float, batch_size: int, latent_shape: tuple[int, ...],
                      pool_dtype: str = "float32", teacher_batch_size: int = 256, device: torch.device | str,
                      generator: torch.Generator, num_timesteps: int | None = None, prepare: bool = True) -> Pool:
    """The dynamic pool of round(rho*T)*|B| latents, prepared by the teacher (or left at pure noise when
    `prepare` is false, e.g. for timing). Its memory is logged and recorded in `pool.meta["nbytes"]`."""
    if pool_dtype not in DTYPES:
        raise ValueError(f"pool_dtype must be one of {sorted(DTYPES)}, got {pool_dtype!r}")
    T = num_timesteps or step.diffusion.num_timesteps  # type: ignore[attr-defined]
    rounds = round(rho * T)
    if rounds < 1:
        raise ValueError(f"rho={rho} with T={T} gives an empty pool")
    n = rounds * batch_size
    dtype, dev = DTYPES[pool_dtype], torch.device(device)
    nbytes = pool_nbytes(n, latent_shape, dtype)
    log.info("latent pool: %d entries of %s in %s = %d bytes (%.3f GiB)", n, tuple(latent_shape), pool_dtype,
             nbytes, nbytes / 2**30)
    if prepare:
        pool = prepare_in_memory(step, n, tuple(latent_shape), T, batch_size=teacher_batch_size, dtype=dtype,
                                 device=dev, generator=generator)
    else:
        pool = noise_pool(n, tuple(latent_shape), T, dtype=dtype, device=dev, generator=generator)
    pool.meta.update({"nbytes": nbytes, "pool_dtype": pool_dtype, "rho": rho, "latent": True})
    return pool


class _DDIMSynthesis:
    """Presents `LatentDiffusion` DDIM sampling with fixed steps and eta under the sampler interface
    `synthesize_dataset` drives (its `config` records the steps with the set)."""

    def __init__(self, diffusion: LatentDiffusion, steps: int, eta: float) -> None:
        self.diffusion, self.steps, self.eta = diffusion, steps, eta
        self.num_timesteps = diffusion.num_timesteps
        self.config = _SynthesisConfig({**diffusion.config.to_dict(), "ddim_steps": steps, "eta": eta})

    def sample(self, model: EpsModel, shape: tuple[int, ...], *, generator: torch.Generator,
               device: torch.device, use_ddim: bool, clip_denoised: bool) -> Tensor:
        return self.diffusion.sample(model, shape, generator=generator, steps=self.steps, eta=self.eta, device=device)


class _SynthesisConfig(dict):
    def to_dict(self) -> dict[str, Any]:
        return dict(self)


def synthesize_latents(teacher: nn.Module, diffusion: LatentDiffusion, num_latents: int, out_path: str | Path, *,
                       latent_shape: tuple[int, ...], batch_size: int, device: torch.device | str, seed: int = 0,
                       steps: int = SYNTHETIC_DDIM_STEPS, progress: bool = True,
                       dist: DistContext | None = None) -> Path:
    """The data-free baseline's synthetic set: teacher DDIM samples (eta 0) kept as float16 latents (resumable)."""
    sampler = _DDIMSynthesis(diffusion, steps, 0.0)
    return synthesize_dataset(teacher, sampler, num_latents, out_path,  # type: ignore[arg-type]
                              image_shape=tuple(latent_shape), batch_size=batch_size, device=device, seed=seed,
                              use_ddim=True, clip_denoised=False, quantize=False, progress=progress,
                              dist=dist)


def latent_source_and_loss(config: DistillConfig, *, teacher: nn.Module, diffusion: LatentDiffusion,
                           latent_shape: tuple[int, ...], device: torch.device | str,
                           first_stage: FirstStage | None = None, real_images: Tensor | None = None,
                           synthetic_path: str | Path | None = None, pool: Pool | None = None
                           ) -> tuple[BatchSource, LossFn]:
    """`source_and_loss` with the latent inputs: the first stage as encoder, the synthetic set from its file.

    `data_free` needs `synthetic_path`; `data_limited` needs it, `real_images` and `first_stage`; `data_based`
    needs `real_images` and `first_stage`.
    """
    if config.clip_denoised:
        raise ValueError("latent DKDM: LDM teachers never clip x0; set clip_denoised to false")
    if config.method in ("data_limited", "data_based") and (real_images is None or first_stage is None):
        raise ValueError(f"latent {config.method} training needs real_images and first_stage")
    synthetic = None
    if config.method in ("data_free", "data_limited"):
        if synthetic_path is None:
            raise ValueError(f"latent {config.method} training needs synthetic_path (teacher DDIM latents)")
        synthetic = load_synthetic(synthetic_path).to(torch.float16)
    encode = None if first_stage is None else first_stage_encoder(first_stage, diffusion, device=device,
                                                                  precision=config.precision)
    return source_and_loss(config, diffusion=diffusion, image_shape=latent_shape, device=device, teacher=teacher,
                           pool=pool, real_images=real_images, synthetic_images=synthetic, encode=encode)
