"""Draw samples from a diffusion model as uint8 images, and write them as an ADM `.npz` and a PNG grid.

Every sample owns a noise stream seeded from (seed, sample index), so the images a seed gives do
not depend on the batch size: sample i is the same whether it was drawn in a batch of 16 or 2,500
(up to float rounding inside the network, which batch size can change on some backends).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from training.data.dataset import check_images_uint8, from_model_range
from training.eval.artifacts import atomic_write
from training.eval.shard import sample_sharded
from training.train.distributed import DistContext


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index`'s noise stream, well mixed so neighbouring streams are unrelated."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class _PerSampleNoise:
    """Standard normal draws for a batch of samples, each row from its own CPU generator."""

    def __init__(self, seed: int, first_index: int, count: int, sample_shape: tuple[int, ...]) -> None:
        self.shape = sample_shape
        self.generators = [
            torch.Generator(device="cpu").manual_seed(sample_seed(seed, first_index + i)) for i in range(count)
        ]

    def draw(self, device: torch.device) -> Tensor:
        rows = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device)


def infer_image_shape(model: nn.Module) -> tuple[int, int]:
    """(channels, image_size) from a dkdm network's `config` (ADM UNet and DiT both carry one)."""
    config = getattr(model, "config", None)
    channels = getattr(config, "in_channels", None)
    size = getattr(config, "image_size", None)
    if channels is None or size is None:
        raise ValueError(
            f"cannot tell the image shape of a {type(model).__name__}: pass image_size= and channels="
        )
    return int(channels), int(size)


@torch.no_grad()
def generate_samples(
    model: nn.Module | Callable[[Tensor, Tensor], Tensor],
    diffusion: Any,
    n: int,
    *,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    use_ddim: bool = False,
    eta: float = 0.0,
    clip_denoised: bool = True,
    progress: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    amp: bool = False,
    dist: DistContext | None = None,
) -> np.ndarray | None:
    """`n` samples as uint8 N×H×W×C, from the reverse chain of `diffusion` (respace it for 50 IDDPM steps).

    Ancestral IDDPM steps by default (the paper's protocol), DDIM with `use_ddim`. `amp` runs the
    network in float16 on CUDA (the paper samples in fp16) and bfloat16 on CPU. Under `dist` the batches are
    shared among the ranks and gathered on rank 0 (other ranks get None), the same images as one process.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    if channels is None or image_size is None:
        inferred_channels, inferred_size = infer_image_shape(model)  # type: ignore[arg-type]
        channels = channels or inferred_channels
        image_size = image_size or inferred_size
    device = torch.device(device)
    sample_shape = (channels, image_size, image_size)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    bar = tqdm(total=n, desc="ddim" if use_ddim else "sampling", unit="img",
               disable=not progress or (dist is not None and not dist.is_main))

    def draw(start: int, count: int) -> Tensor:
        noise = _PerSampleNoise(seed, start, count, sample_shape)
        x = noise.draw(device)
        for i in range(diffusion.num_timesteps - 1, -1, -1):
            t = torch.full((count,), i, dtype=torch.int64, device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                if use_ddim:
                    step_noise = noise.draw(device) if eta != 0 else None
                    step = diffusion.ddim_sample(model, x, t, clip_denoised=clip_denoised, eta=eta, noise=step_noise)
                else:
                    step = diffusion.p_sample(model, x, t, clip_denoised=clip_denoised, noise=noise.draw(device))
            x = step["sample"].float()
        return torch.from_numpy(from_model_range(x))

    try:
        images = sample_sharded(draw, n, batch_size, dist, on_batch=bar.update)
    finally:
        bar.close()
        if was_training:
            model.train()  # type: ignore[union-attr]
    return None if images is None else images.numpy()


def save_samples_npz(path: str | Path, images: np.ndarray) -> Path:
    """Write uint8 N×H×W×C under `arr_0`, the layout the ADM evaluator reads; atomic."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"sample file must end in .npz: {path}")
    check_images_uint8(images, what="samples")
    atomic_write(path, lambda handle: np.savez(handle, arr_0=images))
    return path


def make_grid(images: np.ndarray, nrow: int, *, padding: int = 2) -> np.ndarray:
    """Tile uint8 N×H×W×C into one image, `nrow` images per row, with a black border between tiles."""
    check_images_uint8(images, what="grid images")
    if nrow < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")
    n, h, w, c = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = images[k]
    return grid


def save_grid(path: str | Path, images: np.ndarray, nrow: int = 8, *, scale: int = 1) -> Path:
    """A PNG contact sheet of `images` (`scale` enlarges tiny images such as 8×8 digits); atomic."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"grid file must end in .png: {path}")
    grid = make_grid(images, nrow)
    pil = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid, mode="L" if grid.shape[2] == 1 else "RGB")
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    atomic_write(path, lambda handle: pil.save(handle, format="PNG"))
    return path


PAPER_RESPACING = "50"


def load_sampler(
    checkpoint: str | Path,
    *,
    respacing: str | None = None,
    ema: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, Any]:
    """(network, respaced diffusion) from a dkdm checkpoint, EMA weights by default.

    `respacing` None means the paper's 50 IDDPM steps, or the full chain when the process has at
    most 50 steps; "ddimN" spaces N steps for DDIM (then sample with use_ddim=True).
    """
    from training.diffusion import create_diffusion
    from training.models import load_checkpoint

    model, meta = load_checkpoint(checkpoint, ema=ema, device=device)
    config = dict(meta.diffusion_config)
    if respacing is None:
        respacing = PAPER_RESPACING if int(config.get("steps", 1000)) > int(PAPER_RESPACING) else ""
    config["timestep_respacing"] = respacing
    return model, create_diffusion(**config)
