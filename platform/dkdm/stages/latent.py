"""What the latent-space stages share: the first stage's files, the latent process, and the image <-> latent path.

Images keep the data stage's size (the digits stay 8x8, so the features stage and its statistics are the pixel
pipeline's own). When the first stage works on larger images (vq-f4-digits: 16x16), images are upsampled by nearest
neighbour before encoding and decoded images are area-averaged back: the average of a nearest upsample is the
original, so the round trip adds no resampling blur and evaluation sees only what the autoencoder and the diffusion
made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dkdm.settings import Settings
from dkdm.stages.common import OUT, TEACHER_FILE, read_json, require

AUTOENCODER_DIR = OUT / "autoencoder"
FIRST_STAGE_FILE = AUTOENCODER_DIR / "first_stage.safetensors"
AUTOENCODER_INFO = AUTOENCODER_DIR / "info.json"
# Offset of the per-batch streams that DDIM (eta > 0) and ancestral steps draw from, apart from the start noise.
ETA_STREAM = 1 << 40
# Batch of bulk encoding / decoding: memory only, never results (so no DVC param tracks it).
ENCODE_BATCH = 256


def is_latent(settings: Settings) -> bool:
    return settings.space == "latent"


def first_stage_resolution(settings: Settings) -> int:
    from training.models import get_preset

    return int(get_preset(settings.teacher.latent.first_stage.preset)["ddconfig"]["resolution"])


def latent_shape(settings: Settings) -> tuple[int, int, int]:
    """(C, H, W) of the teacher's latents (the first stage's encoder output at its resolution)."""
    from training.models import get_preset
    from training.models.vq import coerce_vq_config

    config = coerce_vq_config(get_preset(settings.teacher.latent.first_stage.preset))
    return config.latent_shape(config.ddconfig.resolution)


def scale_factor() -> float:
    """The scale factor the autoencoder stage fixed (settings may say 'auto')."""
    from dkdm.first_stage_info import read_scale_factor

    return read_scale_factor(require(AUTOENCODER_INFO, "dkdm autoencoder"))


def diffusion_config(settings: Settings, scale: float) -> dict[str, Any]:
    """The LatentDiffusion of the profile as a plain dict (stored in every latent checkpoint's sidecar)."""
    from training.diffusion.ldm import LatentDiffusionConfig

    latent = settings.teacher.latent
    return {"space": "latent", **LatentDiffusionConfig(settings.diffusion.steps, latent.linear_start,
                                                       latent.linear_end, float(scale)).to_dict()}


def make_latent_diffusion(config: dict[str, Any], device: Any = "cpu"):
    from training.diffusion.ldm import LatentDiffusion

    if config.get("space") != "latent":
        raise ValueError(f"checkpoint holds a {config.get('space', 'pixel')}-space diffusion, not a latent one")
    return LatentDiffusion(int(config["timesteps"]), float(config["linear_start"]), float(config["linear_end"]),
                           float(config["scale_factor"])).to(device)


def load_latent_model(path: Path, device: Any, *, ema: bool = True):
    """(network, its LatentDiffusion, checkpoint meta) from a latent teacher or student checkpoint."""
    from training.models import load_checkpoint

    model, meta = load_checkpoint(path, ema=ema, device=device)
    return model, make_latent_diffusion(meta.diffusion_config, device), meta


def load_latent_teacher(device: Any):
    model, diffusion, _ = load_latent_model(require(TEACHER_FILE, "dkdm teacher"), device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, diffusion


def load_first_stage(device: Any):
    """The pipeline's autoencoder (eval mode, frozen)."""
    from training.models import load_checkpoint

    model, _ = load_checkpoint(require(FIRST_STAGE_FILE, "dkdm autoencoder"), ema=False, device=device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def upsample(x: Any, resolution: int):
    """float NCHW images -> the first stage's resolution (nearest, integer factor)."""
    import torch.nn.functional as F

    factor = resolution // x.shape[-1]
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def first_stage_images(settings: Settings, images_nhwc: Any):
    """uint8 NHWC data-stage images -> float NCHW in [-1, 1] at the first stage's resolution (CPU)."""
    from dkdm.stages.common import nhwc_to_model

    return upsample(nhwc_to_model(images_nhwc), first_stage_resolution(settings))


class CallCounter:
    """Counts forward calls and images through a module (forward hook): the proof that distillation never encodes."""

    def __init__(self, module: Any) -> None:
        self.calls = 0
        self.images = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: Any, inputs: Any, _output: Any) -> None:
        self.calls += 1
        self.images += int(inputs[0].shape[0])

    def remove(self) -> None:
        self._handle.remove()


def decode_to_images(first_stage: Any, diffusion: Any, latents: Any, *, image_size: int, batch_size: int,
                     device: Any):
    """Latents -> uint8 NHWC images at the data size (decode with quantisation as LDM does, then area-average)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from training.data import from_model_range

    out = []
    with torch.no_grad():
        for i in range(0, latents.shape[0], batch_size):
            x = diffusion.decode_first_stage(first_stage, latents[i:i + batch_size].to(device).float())
            factor = x.shape[-1] // image_size
            if factor > 1:
                x = F.avg_pool2d(x, factor)
            out.append(from_model_range(x.clamp(-1, 1)))
    return np.concatenate(out)


def sample_latents(model: Any, diffusion: Any, n: int, *, shape: tuple[int, ...], steps: str, use_ddim: bool,
                   eta: float, batch_size: int, seed: int, device: Any):
    """`n` latents from `model`: DDIM with `steps` (LDM's uniform rule; '' = T) or the full ancestral chain.

    Each sample's starting noise comes from its own (seed, index) stream, so a seed gives the same latents whatever
    the batch size.
    """
    import torch

    from training.eval.sampling import sample_seed

    model.eval()
    count = int(steps) if steps else diffusion.num_timesteps
    out = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, start + i)))
                             for i in range(rows)]).to(device)
        generator = torch.Generator(device=torch.device(device)).manual_seed(sample_seed(seed, ETA_STREAM + start))
        if use_ddim:
            z = diffusion.sample(model, (rows, *shape), generator=generator, steps=count, eta=eta, device=device,
                                 noise=noise)
        else:
            z = _ancestral(model, diffusion, noise, generator)
        out.append(z.float().cpu())
    return torch.cat(out)


def _ancestral(model: Any, diffusion: Any, x: Any, generator: Any):
    import torch

    with torch.no_grad():
        for i in range(diffusion.num_timesteps - 1, -1, -1):
            t = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
            x = diffusion.p_sample(model, x, t, generator=generator)["sample"]
    return x
