"""Latent-space DKDM (METHOD §10): the engine's pool and trainer on LDM latents.

* The pool holds latents (round(rho*T)*|B| entries, optionally half precision); its size in bytes is logged.
* The teacher step is LDM's fixed-variance ancestral step without x0 clipping; the student matches its eps (MSE
  only: these teachers have no learned variance, so there is no KL term).
* Distillation never touches the autoencoder. Only the data-based baseline encodes images, every step, as LDM's
  training does; that cost is what Table 9 compares.
* Data-free: the teacher's DDIM-100 (eta 0) samples, stored as float16 latents; data-limited: real images encoded
  once and mixed with them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training.diffusion.ldm import EpsModel, FirstStage, LatentDiffusion, latent_dkdm_loss, mean_flat
from training.distill.baselines import load_synthetic, mix_data_limited, synthesize_dataset
from training.distill.config import DATASET_METHODS, DistillConfig
from training.distill.pool import DTYPES, Pool, noise_pool, prepare_in_memory
from training.distill.sources import DataBatch, DatasetSource, PoolSource, TeacherBatch
from training.train.precision import autocast_for
from training.train.rng import make_generator

log = logging.getLogger(__name__)

SYNTHETIC_DDIM_STEPS = 100  # the paper's data-free latent baseline samples with DDIM-100, eta 0


class LatentTeacherStep:
    """`TeacherStep` for an LDM teacher: (x_t, t, noise) -> (teacher_out, x_{t-1}), in chunks, without gradients.

    `teacher_out` carries `model_output` (the teacher's eps, the loss target), `pred_x0`, `mean`, `variance` and
    `log_variance` (fixed: the clipped posterior log-variance).
    """

    def __init__(self, teacher: nn.Module, diffusion: LatentDiffusion, *, batch_size: int | None = None,
                 precision: str = "auto") -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.diffusion = diffusion
        self.batch_size = batch_size
        self.precision = precision

    def _forward(self, x: Tensor, t: Tensor) -> Tensor:
        with autocast_for(x.device, self.precision):
            return self.teacher(x, t).float()

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, noise: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        chunk = self.batch_size or x_t.shape[0]
        pieces = [self.diffusion.p_sample(self._forward, x_t[i:i + chunk], t[i:i + chunk], noise=noise[i:i + chunk])
                  for i in range(0, x_t.shape[0], chunk)]
        out = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
        x_prev = out.pop("sample")
        out["model_output"] = out.pop("eps")
        return out, x_prev


def latent_dkdm_loss_fn() -> Any:
    """Trainer loss over `TeacherBatch`es: per-sample eps MSE (vb is reported as zero)."""

    def loss(student: nn.Module, batch: TeacherBatch) -> dict[str, Tensor]:
        mse = latent_dkdm_loss(student, batch.x_t, batch.t, batch.teacher_out["model_output"].float())
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    return loss


def latent_simple_loss_fn(diffusion: LatentDiffusion) -> Any:
    """Trainer loss over `DataBatch`es of latents (LDM's L_simple): eps MSE with the batch's own t and noise."""

    def loss(model: nn.Module, batch: DataBatch) -> dict[str, Tensor]:
        x_t = diffusion.q_sample(batch.x_start, batch.t, batch.noise)
        mse = mean_flat((model(x_t, batch.t).float() - batch.noise) ** 2)
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    return loss


def pool_nbytes(num_entries: int, latent_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes the pool's latents take (plus 8 per int64 timestep)."""
    per = int(torch.tensor([], dtype=dtype).element_size())
    numel = 1
    for d in latent_shape:
        numel *= int(d)
    return num_entries * (numel * per + 8)


def build_latent_pool(step: LatentTeacherStep, *, rho: float, batch_size: int, latent_shape: tuple[int, ...],
                      pool_dtype: str = "float32", teacher_batch_size: int = 256, device: torch.device | str,
                      generator: torch.Generator, prepare: bool = True) -> Pool:
    """The dynamic pool of round(rho*T)*|B| latents, prepared by the teacher (or left at pure noise when
    `prepare` is false, e.g. for timing). Its memory is logged and recorded in `pool.meta["nbytes"]`."""
    if pool_dtype not in DTYPES:
        raise ValueError(f"pool_dtype must be one of {sorted(DTYPES)}, got {pool_dtype!r}")
    num_timesteps = step.diffusion.num_timesteps
    rounds = round(rho * num_timesteps)
    if rounds < 1:
        raise ValueError(f"rho={rho} with T={num_timesteps} gives an empty pool")
    n = rounds * batch_size
    dtype, dev = DTYPES[pool_dtype], torch.device(device)
    nbytes = pool_nbytes(n, latent_shape, dtype)
    log.info("latent pool: %d entries of %s in %s = %d bytes (%.3f GiB)", n, tuple(latent_shape), pool_dtype,
             nbytes, nbytes / 2**30)
    if prepare:
        pool = prepare_in_memory(step, n, tuple(latent_shape), num_timesteps, batch_size=teacher_batch_size,
                                 dtype=dtype, device=dev, generator=generator)
    else:
        pool = noise_pool(n, tuple(latent_shape), num_timesteps, dtype=dtype, device=dev, generator=generator)
    pool.meta.update({"nbytes": nbytes, "pool_dtype": pool_dtype, "rho": rho, "latent": True})
    return pool


class EncodingSource:
    """Data-based latent training: each step draws real images and encodes them with the first stage.

    `images` (N, C, H, W) uint8 or float in [-1, 1] stay where they are; each batch moves to `device`, is encoded
    under no_grad (and autocast per `precision`) and gets a uniform t and latent-shaped noise.
    """

    def __init__(self, images: Tensor, first_stage: FirstStage, diffusion: LatentDiffusion, *, batch_size: int,
                 device: torch.device | str, generator: torch.Generator, noise_generator: torch.Generator,
                 precision: str = "auto") -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
        self.images = images
        self.first_stage = first_stage
        self.diffusion = diffusion
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = generator
        self.noise_generator = noise_generator
        self.precision = precision
        self._order = torch.randperm(images.shape[0], generator=generator)
        self._position = 0
        self.epochs = 0
        self.encoded = 0

    def _take(self, n: int) -> Tensor:
        picked = []
        while n:
            if self._position == len(self._order):
                self._order = torch.randperm(self.images.shape[0], generator=self.generator)
                self._position, self.epochs = 0, self.epochs + 1
            part = self._order[self._position:self._position + n]
            self._position += part.numel()
            n -= part.numel()
            picked.append(part)
        return torch.cat(picked)

    @torch.no_grad()
    def next_batch(self) -> DataBatch:
        x = self.images[self._take(self.batch_size)].to(self.device, non_blocking=True)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        with autocast_for(self.device, self.precision):
            z = self.diffusion.encode_first_stage(self.first_stage, x).float()
        self.encoded += x.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (z.shape[0],), generator=self.generator).to(self.device)
        noise = torch.randn(z.shape, generator=self.noise_generator, device=self.noise_generator.device)
        return DataBatch(z, t, noise.to(self.device))

    def stats(self) -> dict[str, float]:
        return {"epochs": float(self.epochs), "encoded_images": float(self.encoded)}

    def state_tensors(self) -> dict[str, Tensor]:
        return {"order": self._order,
                "counters": torch.tensor([self._position, self.epochs, self.encoded], dtype=torch.int64),
                "generator": self.generator.get_state(), "noise_generator": self.noise_generator.get_state()}

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        self._order = state["order"].clone()
        self._position, self.epochs, self.encoded = (int(v) for v in state["counters"])
        self.generator.set_state(state["generator"])
        self.noise_generator.set_state(state["noise_generator"])


class _DDIMSynthesis:
    """Presents `LatentDiffusion` DDIM sampling under the sampler interface `synthesize_dataset` drives."""

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
                       steps: int = SYNTHETIC_DDIM_STEPS, progress: bool = True) -> Path:
    """The data-free baseline's synthetic set: teacher DDIM samples (eta 0) kept as float16 latents (resumable)."""
    sampler = _DDIMSynthesis(diffusion, steps, 0.0)
    return synthesize_dataset(teacher, sampler, num_latents, out_path,  # type: ignore[arg-type]
                              image_shape=tuple(latent_shape), batch_size=batch_size, device=device, seed=seed, use_ddim=True, clip_denoised=False,
                              quantize=False, progress=progress)


@torch.no_grad()
def encode_images(first_stage: FirstStage, diffusion: LatentDiffusion, images: Tensor, *, batch_size: int,
                  device: torch.device | str) -> Tensor:
    """Latents (float16, CPU) of a whole image set, for the data-limited mix."""
    dev, out = torch.device(device), []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(dev)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        out.append(diffusion.encode_first_stage(first_stage, x).to(torch.float16).cpu())
    return torch.cat(out)


def latent_source_and_loss(config: DistillConfig, *, teacher: nn.Module, diffusion: LatentDiffusion,
                           latent_shape: tuple[int, ...], device: torch.device | str, rank: int = 0,
                           first_stage: FirstStage | None = None, real_images: Tensor | None = None,
                           synthetic_path: str | Path | None = None, pool: Pool | None = None
                           ) -> tuple[Any, Any]:
    """(source, loss_fn) for the `Trainer`, for every method of `config` in latent space.

    Pool methods need the teacher (and `pool` when prepared elsewhere); `data_free` needs `synthetic_path`;
    `data_limited` needs `synthetic_path`, `real_images` and `first_stage` (the real part is encoded once);
    `data_based` needs `real_images` and `first_stage` (encoded every step).
    """
    if config.clip_denoised:
        raise ValueError("latent DKDM: LDM teachers never clip x0; set clip_denoised to false")
    dev = torch.device(device)
    select = make_generator("cpu", config.seed, "select", rank)
    noise = make_generator(dev, config.seed, "noise", rank)
    if config.method not in DATASET_METHODS:
        step = LatentTeacherStep(teacher, diffusion, batch_size=config.teacher_batch_size, precision=config.precision)
        if config.method == "dynamic":
            pool = pool or build_latent_pool(step, rho=config.rho, batch_size=config.batch_size,
                                             latent_shape=latent_shape, pool_dtype=config.pool_dtype,
                                             teacher_batch_size=config.teacher_batch_size, device=dev,
                                             generator=make_generator(dev, config.seed, "prepare", rank))
        elif config.method == "shuffled":
            pool = pool or build_latent_pool(step, rho=1.0 / diffusion.num_timesteps, batch_size=config.batch_size,
                                             latent_shape=latent_shape, pool_dtype=config.pool_dtype,
                                             teacher_batch_size=config.teacher_batch_size, device=dev,
                                             generator=make_generator(dev, config.seed, "prepare", rank))
        else:  # iterative: one batch of noise walked in lock-step
            pool = pool or noise_pool(config.batch_size, tuple(latent_shape), diffusion.num_timesteps,
                                      dtype=DTYPES[config.pool_dtype], device=dev,
                                      generator=make_generator(dev, config.seed, "prepare", rank))
        source = PoolSource(pool, step, batch_size=config.batch_size, select_all=config.method != "dynamic",
                            discard_prob=config.discard_prob, select_generator=select, noise_generator=noise)
        return source, latent_dkdm_loss_fn()

    if config.method == "data_based":
        if real_images is None or first_stage is None:
            raise ValueError("latent data_based training needs real_images and first_stage")
        source = EncodingSource(real_images, first_stage, diffusion, batch_size=config.batch_size, device=dev,
                                generator=make_generator("cpu", config.seed, "data", rank), noise_generator=noise,
                                precision=config.precision)
        return source, latent_simple_loss_fn(diffusion)

    if synthetic_path is None:
        raise ValueError(f"latent {config.method} training needs synthetic_path (teacher DDIM latents)")
    latents = load_synthetic(synthetic_path)
    if tuple(latents.shape[1:]) != tuple(latent_shape):
        raise ValueError(f"synthetic latents have shape {tuple(latents.shape[1:])}, expected {tuple(latent_shape)}")
    if config.method == "data_limited":
        if real_images is None or first_stage is None:
            raise ValueError("latent data_limited training needs real_images and first_stage")
        real = encode_images(first_stage, diffusion, real_images, batch_size=config.teacher_batch_size, device=dev)
        latents = mix_data_limited(real, latents.to(torch.float16), config.data_fraction or 0.0, seed=config.seed)
    source = DatasetSource(latents, diffusion.num_timesteps, batch_size=config.batch_size, device=dev,
                           generator=make_generator("cpu", config.seed, "data", rank), noise_generator=noise)
    return source, latent_simple_loss_fn(diffusion)
