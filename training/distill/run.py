"""One entry point for every method, in pixel or latent space: build the source and loss for `config.method`,
then train.

DKDM methods (dynamic / shuffled / iterative) train with `dkdm_losses` on teacher batches; the baselines
(data_free / data_limited / data_based) train with the process's own `training_losses` on an image set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training.diffusion import GaussianDiffusion, Process
from training.distill.baselines import DatasetError, mix_data_limited
from training.distill.compat import check_compatible
from training.distill.config import POOL_METHODS, DistillConfig
from training.distill.objective import LossFn, dkdm_loss_fn, hybrid_loss_fn
from training.distill.pool import (
    DTYPES,
    POOL_WORK_METRIC,
    Pool,
    PoolError,
    load_pool,
    noise_pool,
    prepare_in_memory,
)
from training.distill.pool_prep import Walk
from training.distill.sources import BatchSource, DatasetSource, Encoder, PoolSource
from training.distill.teacher import DiffusionTeacherStep, TeacherStep
from training.train.distributed import DistContext
from training.train.rng import make_generator
from training.train.tracker import Tracker
from training.train.trainer import EvalFn, Trainer


def _pool_for(config: DistillConfig, step: TeacherStep, diffusion: Process, image_shape: tuple[int, ...],
              device: torch.device, ctx: DistContext, pool_path: str | Path | None) -> Pool:
    num_timesteps = diffusion.num_timesteps
    dtype = DTYPES[config.pool_dtype]
    generator = make_generator(device, config.seed, "prepare", ctx.rank)
    b = config.batch_size
    if config.method == "iterative":
        return noise_pool(b, image_shape, num_timesteps, dtype=dtype, device=device, generator=generator)
    if config.method == "shuffled":
        return prepare_in_memory(step, b, image_shape, num_timesteps, batch_size=config.teacher_batch_size,
                                 dtype=dtype, device=device, generator=generator)
    if pool_path is None:
        prepared = prepare_in_memory(step, config.pool_config().num_entries(num_timesteps), image_shape,
                                     num_timesteps, batch_size=config.teacher_batch_size, dtype=dtype, device=device,
                                     generator=generator, walk=Walk(config.pool_prep, diffusion))
        # Every rank prepared its own pool: the job's work is their sum, as a pool file records it.
        work = torch.tensor([prepared.meta["teacher_evals"]], dtype=torch.int64, device=ctx.device)
        prepared.meta["teacher_image_steps"] = int(ctx.all_reduce_sum(work).item())
        return prepared
    pool = load_pool(pool_path, device=device, ctx=ctx)
    if pool.num_timesteps != num_timesteps:
        raise PoolError(f"pool {pool_path} was prepared for T={pool.num_timesteps}, the student has T={num_timesteps}")
    if tuple(pool.x.shape[1:]) != tuple(image_shape):
        raise PoolError(f"pool {pool_path} holds images {tuple(pool.x.shape[1:])}, expected {tuple(image_shape)}")
    if len(pool) < b:
        raise PoolError(f"pool shard of {len(pool)} entries is smaller than batch_size={b}")
    if pool.x.dtype != dtype:
        pool.x = pool.x.to(dtype)
    return pool


def _dataset_for(config: DistillConfig, real: Tensor | None, synthetic: Tensor | None) -> Tensor:
    if config.method == "data_based":
        if real is None:
            raise DatasetError("method 'data_based' needs the real training images")
        return real
    if synthetic is None:
        raise DatasetError(f"method {config.method!r} needs the teacher's synthetic set")
    if config.method == "data_free":
        return synthetic
    if real is None:
        raise DatasetError("method 'data_limited' needs the real training images")
    assert config.data_fraction is not None  # the config validator guarantees it
    return mix_data_limited(real, synthetic, config.data_fraction, seed=0)


@torch.no_grad()
def encode_all(encode: Encoder, images: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """`encode` over a whole image set in batches, kept as float16 on the CPU (the data-limited real part)."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        out.append(encode(x).to(torch.float16).cpu())
    return torch.cat(out)


def source_and_loss(
    config: DistillConfig,
    *,
    diffusion: Process,
    image_shape: tuple[int, ...],
    device: torch.device | str,
    teacher: nn.Module | None = None,
    pool: Pool | None = None,
    pool_path: str | Path | None = None,
    real_images: Tensor | None = None,
    synthetic_images: Tensor | None = None,
    encode: Encoder | None = None,
    ctx: DistContext | None = None,
) -> tuple[BatchSource, LossFn]:
    """The batch source and loss of `config.method` on `diffusion` (pixel or latent: both speak one interface).

    DKDM methods (iterative, shuffled, dynamic: the paper's Sec. 3.3) step `teacher` over a pool of `image_shape` model
    inputs: a given `pool`, the prepared pool at `pool_path`, or one prepared in memory. The baselines (Table 4)
    train on an image set; `encode` maps a batch of real images to model inputs (a latent space's first stage):
    data_based then encodes every batch, data_limited encodes the real set once.
    """
    dev = torch.device(device)
    ctx = ctx or DistContext(device=dev)
    image_shape = tuple(int(v) for v in image_shape)
    T = diffusion.num_timesteps
    if config.method in POOL_METHODS:
        if teacher is None:
            raise ValueError(f"method {config.method!r} needs the teacher")
        step = DiffusionTeacherStep(teacher.to(dev), diffusion, clip_denoised=config.clip_denoised,
                                    batch_size=config.teacher_batch_size, precision=config.precision)
        pool = pool or _pool_for(config, step, diffusion, image_shape, dev, ctx, pool_path)
        source: BatchSource = PoolSource(
            pool, step, batch_size=config.batch_size, select_all=config.method != "dynamic",
            discard_prob=config.discard_prob,
            select_generator=make_generator("cpu", config.seed, "select", ctx.rank),
            noise_generator=make_generator(dev, config.seed, "noise", ctx.rank),
        )
        return source, dkdm_loss_fn(diffusion)
    real = real_images
    if encode is not None and real is not None and config.method == "data_limited":
        real = encode_all(encode, real, batch_size=config.teacher_batch_size, device=dev)
    images = _dataset_for(config, real, synthetic_images)
    per_batch = encode if config.method == "data_based" else None
    if per_batch is None and tuple(images.shape[1:]) != image_shape:
        raise DatasetError(f"{config.method} images have shape {tuple(images.shape[1:])}, expected {image_shape}")
    source = DatasetSource(
        images, T, batch_size=config.batch_size, device=dev,
        generator=make_generator("cpu", config.seed, "data", ctx.rank),
        noise_generator=make_generator(dev, config.seed, "noise", ctx.rank), encode=per_batch,
        random_flip=config.random_flip,
    )
    return source, hybrid_loss_fn(diffusion)


def build_run(
    config: DistillConfig,
    *,
    student: nn.Module,
    student_diffusion: Process,
    image_shape: tuple[int, ...],
    device: torch.device | str,
    teacher: nn.Module | None = None,
    teacher_diffusion: Process | None = None,
    pool: Pool | None = None,
    pool_path: str | Path | None = None,
    real_images: Tensor | None = None,
    synthetic_images: Tensor | None = None,
    encode: Encoder | None = None,
    out_dir: str | Path | None = None,
    tracker: Tracker | None = None,
    eval_fn: EvalFn | None = None,
    ctx: DistContext | None = None,
    run_meta: dict[str, Any] | None = None,
) -> Trainer:
    """A ready Trainer for `config.method` (not yet resumed or run); see `source_and_loss` for the inputs.

    The teacher walks `teacher_diffusion`, which must be the student's process (checked for pixel processes;
    a latent teacher and student share the one process of the teacher's checkpoint).
    """
    dev = torch.device(device)
    ctx = ctx or DistContext(device=dev)
    if config.method in POOL_METHODS:
        if teacher is None or teacher_diffusion is None:
            raise ValueError(f"method {config.method!r} needs the teacher and its diffusion")
        if isinstance(teacher_diffusion, GaussianDiffusion) and isinstance(student_diffusion, GaussianDiffusion):
            check_compatible(teacher, teacher_diffusion, student, student_diffusion, tuple(image_shape))
    source, loss = source_and_loss(
        config, diffusion=teacher_diffusion if config.method in POOL_METHODS else student_diffusion,
        image_shape=image_shape, device=dev, teacher=teacher, pool=pool, pool_path=pool_path,
        real_images=real_images, synthetic_images=synthetic_images, encode=encode, ctx=ctx,
    )
    if config.method in POOL_METHODS:
        loss = dkdm_loss_fn(student_diffusion)
        work = source.pool.meta.get("teacher_image_steps") if isinstance(source, PoolSource) else None
        if tracker is not None and work is not None and ctx.is_main:
            tracker.log_metrics({POOL_WORK_METRIC: float(work)}, 0)  # the preparation's cost, beside the run's
    meta = {"method": config.method, **(run_meta or {})}
    return Trainer(student, config, source, loss, device=dev, out_dir=out_dir, tracker=tracker, eval_fn=eval_fn,
                   ctx=ctx, run_meta=meta)

