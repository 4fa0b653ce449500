"""The paper's baselines (Table 4): a teacher-sampled synthetic set, the data-limited mix, and real data.

A synthetic set is a safetensors artifact: `images` (N, C, H, W) uint8 for pixel sets (as the official sampler
saves them) or float16 for latent sets, plus JSON metadata. Batch i of the set is drawn from its own generator
(seed, batch index), so a set is the same however often its writing was interrupted and resumed, and however
many ranks shared the batches.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from training.diffusion import GaussianDiffusion
from training.eval.shard import batch_rows, gather_batches, rank_batches
from training.train.distributed import DistContext
from training.train.precision import autocast_for
from training.train.rng import make_generator
from training.train.state import atomic_save_tensors

SYNTHETIC_FORMAT = "dkdm-synthetic/1"


class DatasetError(ValueError):
    """A synthetic or mixed dataset is missing, malformed or inconsistent."""


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats to the uint8 grid, as images are saved."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def synthesize_dataset(
    teacher: nn.Module,
    diffusion: GaussianDiffusion,
    num_images: int,
    out_path: str | Path,
    *,
    image_shape: tuple[int, ...],
    batch_size: int,
    device: torch.device | str,
    seed: int = 0,
    use_ddim: bool = False,
    clip_denoised: bool = True,
    quantize: bool = True,
    progress: bool = True,
    resume: bool = True,
    save_every_batches: int = 10,
    dist: DistContext | None = None,
) -> Path:
    """Sample `num_images` from the teacher (ancestral, or DDIM eta 0) on `diffusion` (already respaced as wanted).

    Under `dist` rank r draws batches r, r+W, ... and rank 0 writes the set, the same set as one process writes.
    Each rank saves its progress every `save_every_batches` of its batches to its own work file
    (`<out_path>.partial`, or `.partial.rank<r>-of-<W>`) and resumes from there.
    """
    if num_images < 1 or batch_size < 1:
        raise DatasetError(f"num_images and batch_size must be positive, got {num_images} and {batch_size}")
    out_path, dev = Path(out_path), torch.device(device)
    dist = dist or DistContext(device=dev)
    settings = {"num_images": num_images, "image_shape": list(image_shape), "seed": seed, "use_ddim": use_ddim,
                "clip_denoised": clip_denoised, "quantize": quantize, "batch_size": batch_size,
                "diffusion": diffusion.config.to_dict()}
    if resume and out_path.is_file():
        if read_synthetic_meta(out_path).get("settings") == settings:
            return out_path
        raise DatasetError(f"{out_path} exists with different settings; remove it or choose another output path")
    dtype = torch.uint8 if quantize else torch.float16
    mine = list(rank_batches(num_images, batch_size, dist))
    rows = sum(batch_rows(k, num_images, batch_size)[1] for k in mine)
    images = torch.empty((rows, *image_shape), dtype=dtype)
    done_batches, done = 0, 0
    partial = _partial_path(out_path, dist)
    if resume and partial.is_file():
        meta = read_synthetic_meta(partial, expect_format=SYNTHETIC_FORMAT + "-partial")
        if meta.get("settings") != settings:
            raise DatasetError(f"partial set {partial} was started with different settings; delete it")
        done = int(meta["done"])
        done_batches = int(meta.get("done_batches", done // batch_size))  # files of one process before sharding
        images[:done] = load_file(str(partial))["images"][:done]

    teacher = teacher.eval()

    def forward(x: Tensor, t: Tensor) -> Tensor:
        with autocast_for(dev):
            return teacher(x, t)

    bar = tqdm(total=rows, initial=done, unit="img", desc="synthesize", disable=not (progress and dist.is_main))
    with torch.no_grad():
        for j in range(done_batches, len(mine)):
            n = batch_rows(mine[j], num_images, batch_size)[1]
            generator = make_generator(dev, seed, "synthetic", rank=mine[j])  # the batch index, never the rank
            x = diffusion.sample(forward, (n, *image_shape), generator=generator, device=dev, use_ddim=use_ddim,
                                 clip_denoised=clip_denoised)
            images[done : done + n] = to_uint8(x).cpu() if quantize else x.to(dtype).cpu()
            done += n
            bar.update(n)
            if (j + 1) % save_every_batches == 0 and j + 1 < len(mine):
                atomic_save_tensors(partial, {"images": images[:done]}, {
                    "format": SYNTHETIC_FORMAT + "-partial", "settings": settings, "done": done,
                    "done_batches": j + 1})
    bar.close()
    full = gather_batches(images, num_images, batch_size, dist)
    if full is not None:
        atomic_save_tensors(out_path, {"images": full}, {"format": SYNTHETIC_FORMAT, "settings": settings})
    dist.barrier()
    partial.unlink(missing_ok=True)
    return out_path


def _partial_path(out_path: Path, dist: DistContext) -> Path:
    suffix = ".partial" if not dist.enabled else f".partial.rank{dist.rank}-of-{dist.world_size}"
    return out_path.with_name(out_path.name + suffix)


def read_synthetic_meta(path: str | Path, *, expect_format: str = SYNTHETIC_FORMAT) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"synthetic set {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dkdm", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} is not a readable safetensors file: {err}") from None
    if meta.get("format") != expect_format:
        raise DatasetError(f"{path} is not a dkdm synthetic set (format {meta.get('format')!r})")
    return meta


def load_synthetic(path: str | Path) -> Tensor:
    read_synthetic_meta(path)
    return load_file(str(path))["images"]


def mix_data_limited(real: Tensor, synthetic: Tensor, fraction: float, *, seed: int = 0) -> Tensor:
    """A set of len(real) images: round(P*N) real ones drawn without replacement plus N - round(P*N) synthetic.

    Both draws come from one generator seeded `seed` (0 in the paper's data-limited runs).
    """
    if not 0 < fraction < 1:
        raise DatasetError(f"data fraction must lie in (0, 1), got {fraction}")
    if real.shape[1:] != synthetic.shape[1:] or real.dtype != synthetic.dtype:
        raise DatasetError(f"real images {tuple(real.shape[1:])} {real.dtype} and synthetic images "
                           f"{tuple(synthetic.shape[1:])} {synthetic.dtype} differ in shape or dtype")
    n = real.shape[0]
    n_real = round(fraction * n)
    if synthetic.shape[0] < n - n_real:
        raise DatasetError(f"need {n - n_real} synthetic images for fraction {fraction}, have {synthetic.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    real_idx = torch.randperm(n, generator=generator)[:n_real]
    synth_idx = torch.randperm(synthetic.shape[0], generator=generator)[: n - n_real]
    return torch.cat([real[real_idx], synthetic[synth_idx]])
