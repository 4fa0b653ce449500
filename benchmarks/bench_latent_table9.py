"""Table 9: seconds per 100 iterations of latent DKDM vs latent data-based training, same student and batch.

DKDM's step = one teacher ancestral step on |B| pool latents + the student's step; the data-based step = encoding
|B| real images with the VQ-f4 encoder + the student's step. The paper (A100, CelebA-HQ 256, b 48): 55.52 s vs
68.77 s (ratio 0.807). Weights and images are random: only the cost is measured, and the pool starts at random
timesteps instead of being prepared (preparation is a one-off cost outside the loop).

    python benchmarks/bench_latent_table9.py --scale paper --device cuda --precision fp32
    python benchmarks/bench_latent_table9.py --scale cpu --iters 20
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace

import torch

from training.diffusion.ldm import LatentDiffusion
from training.distill.latent import first_stage_encoder, pool_nbytes
from training.distill.objective import dkdm_loss_fn, hybrid_loss_fn
from training.distill.pool import DTYPES, noise_pool
from training.distill.sources import DatasetSource, PoolSource
from training.distill.teacher import DiffusionTeacherStep
from training.models.latent_presets import get_latent_preset
from training.models.ldm_unet import LDMUNet
from training.models.vq import VQModel
from training.train.config import TrainConfig
from training.train.trainer import Trainer

PAPER = {"dkdm": 55.52, "data_based": 68.77}


@dataclass(frozen=True)
class Scale:
    teacher: str
    student: str
    first_stage: str
    batch_size: int
    image_size: int
    latent_shape: tuple[int, int, int]
    lr: float


SCALES = {
    "paper": Scale("ldm-celebahq-274M-teacher", "ldm-86M-student", "vq-f4", 48, 256, (3, 64, 64), 9.6e-5),
    "cpu": Scale("ldm-unet-small", "ldm-unet-small", "vq-f4-small", 8, 32, (3, 8, 8), 1e-4),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(trainer: Trainer, warmup: int, iters: int, device: torch.device) -> float:
    trainer.run(until=warmup)
    _sync(device)
    start = time.perf_counter()
    trainer.run(until=warmup + iters)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="fp32")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rho", type=float, default=4.0)
    parser.add_argument("--pool-dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--num-images", type=int, default=0, help="real images to draw from (default 4 batches)")
    parser.add_argument("--batch-size", type=int, default=0, help="override the scale's batch (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.iters < 1 or args.warmup < 1:
        parser.error("--iters and --warmup must be positive")

    scale, device = SCALES[args.scale], torch.device(args.device)
    if args.batch_size:
        scale = replace(scale, batch_size=args.batch_size)
    torch.manual_seed(args.seed)  # random weights only; every data draw below uses explicit generators
    diffusion = LatentDiffusion().to(device)
    with device:
        teacher = LDMUNet.from_config(get_latent_preset(scale.teacher))
        vq = VQModel.from_config(get_latent_preset(scale.first_stage)).eval()
    config = TrainConfig(iterations=args.warmup + args.iters, batch_size=scale.batch_size, lr=scale.lr,
                         precision=args.precision, ema_warmup=True, log_every=10**9, seed=args.seed)
    results: dict[str, float] = {}

    # Latent DKDM: pool of round(rho*T)*b latents at random timesteps, teacher step + student step.
    gen = torch.Generator(device=device).manual_seed(args.seed)
    n_pool = round(args.rho * diffusion.num_timesteps) * scale.batch_size
    pool = noise_pool(n_pool, scale.latent_shape, diffusion.num_timesteps, dtype=DTYPES[args.pool_dtype],
                      device=device, generator=gen)
    pool.s.copy_(torch.randint(1, diffusion.num_timesteps + 1, (n_pool,), generator=gen, device=device))
    step = DiffusionTeacherStep(teacher, diffusion, clip_denoised=False, precision=args.precision)
    source = PoolSource(pool, step, batch_size=scale.batch_size, select_all=False,
                        select_generator=torch.Generator().manual_seed(args.seed + 1),
                        noise_generator=torch.Generator(device=device).manual_seed(args.seed + 2))
    with device:
        student = LDMUNet.from_config(get_latent_preset(scale.student))
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = Trainer(student, config, source, dkdm_loss_fn(diffusion), device=device)
    results["dkdm"] = _timed(trainer, args.warmup, args.iters, device) * 100.0 / args.iters
    if device.type == "cuda":
        results["dkdm_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    pool_bytes = pool_nbytes(n_pool, scale.latent_shape, DTYPES[args.pool_dtype])
    del trainer, source, pool, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    # Latent data-based: real uint8 images on the host, encoded every step, same student (same initial weights).
    n_images = args.num_images or 4 * scale.batch_size
    images = torch.randint(0, 256, (n_images, 3, scale.image_size, scale.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(args.seed + 3))
    if device.type == "cuda":
        images = images.pin_memory()
    source = DatasetSource(images, diffusion.num_timesteps, batch_size=scale.batch_size, device=device,
                           generator=torch.Generator().manual_seed(args.seed + 4),
                           noise_generator=torch.Generator(device=device).manual_seed(args.seed + 5),
                           encode=first_stage_encoder(vq, diffusion, device=device, precision=args.precision))
    student.load_state_dict(initial)
    trainer = Trainer(student, config, source, hybrid_loss_fn(diffusion), device=device)
    results["data_based"] = _timed(trainer, args.warmup, args.iters, device) * 100.0 / args.iters
    if device.type == "cuda":
        results["data_based_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    ratio = results["dkdm"] / results["data_based"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device_name}, scale {args.scale}, batch {scale.batch_size}, precision {args.precision}, "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    print(f"  latent DKDM        {results['dkdm']:8.2f} s / 100 it   (paper A100: {PAPER['dkdm']})")
    print(f"  latent data-based  {results['data_based']:8.2f} s / 100 it   (paper A100: {PAPER['data_based']})")
    print(f"  ratio DKDM / data-based = {ratio:.3f}   (paper: {PAPER['dkdm'] / PAPER['data_based']:.3f})")
    print(f"  pool: {n_pool} latents {scale.latent_shape} {args.pool_dtype} = {pool_bytes} bytes")
    print(json.dumps({"scale": args.scale, "device_name": device_name, "precision": args.precision,
                      "batch_size": scale.batch_size, "train_seconds_per_100_iters": results, "ratio": ratio,
                      "pool_bytes": pool_bytes}))


if __name__ == "__main__":
    main()
