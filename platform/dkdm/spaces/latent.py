"""Latent space (the paper's LDM teachers, Table 9): the networks see a frozen first stage's latents; images are
encoded and decoded.

Images keep the data stage's size (the digits stay 8x8, so the features stage and its statistics are the pixel
pipeline's own). When the first stage works on larger images (vq-f4-digits: 16x16), images are upsampled by nearest
neighbour before encoding and decoded images are area-averaged back: the average of a nearest upsample is the
original, so the round trip adds no resampling blur and evaluation sees only what the autoencoder and the diffusion
made. Every latent checkpoint's sidecar carries its LatentDiffusion (space, T, beta range, scale factor).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dkdm.errors import DkdmError
from dkdm.settings import Settings
from dkdm.stages.common import AUTOENCODER_INFO, FIRST_STAGE_FILE, TEACHER_FILE, nhwc_to_model, require
from training.diffusion import Process
from training.diffusion.ldm import FirstStage, LatentDiffusion
from training.distill.sources import Encoder
from training.models.checkpoint import CheckpointMeta
from training.train.distributed import DistContext

__all__ = ["AUTOENCODER_INFO", "FIRST_STAGE_FILE", "LatentSpace", "decode_to_images", "load_latent_model",
           "sample_latents", "upsample"]

# Offset of the per-batch streams that DDIM (eta > 0) and ancestral steps draw from, apart from the start noise.
ETA_STREAM = 1 << 40
# Batch of bulk encoding / decoding: memory only, never results (so no DVC param tracks it).
ENCODE_BATCH = 256


def first_stage_resolution(settings: Settings) -> int:
    from training.models import get_preset

    return int(get_preset(settings.teacher.latent.first_stage.preset)["ddconfig"]["resolution"])


def latent_shape(settings: Settings) -> tuple[int, int, int]:
    """(C, H, W) of the teacher's latents (the first stage's encoder output at its resolution)."""
    from training.models import get_preset
    from training.models.vq import coerce_vq_config

    config = coerce_vq_config(get_preset(settings.teacher.latent.first_stage.preset))
    return config.latent_shape(config.ddconfig.resolution)


def make_latent_diffusion(config: Mapping[str, Any], device: torch.device | str = "cpu") -> LatentDiffusion:
    if config.get("space") != "latent":
        raise ValueError(f"checkpoint holds a {config.get('space', 'pixel')}-space diffusion, not a latent one")
    return LatentDiffusion(int(config["timesteps"]), float(config["linear_start"]), float(config["linear_end"]),
                           float(config["scale_factor"])).to(device)


def load_latent_model(path: Path, device: torch.device | str, *, ema: bool = True
                      ) -> tuple[nn.Module, LatentDiffusion, CheckpointMeta]:
    """(network, its LatentDiffusion, checkpoint meta) from a latent teacher or student checkpoint."""
    from training.models import load_checkpoint

    model, meta = load_checkpoint(path, ema=ema, device=device)
    return model, make_latent_diffusion(meta.diffusion_config, device), meta


def upsample(x: Tensor, resolution: int) -> Tensor:
    """float NCHW images -> the first stage's resolution (nearest, integer factor)."""
    import torch.nn.functional as F

    factor = resolution // x.shape[-1]
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def first_stage_images(settings: Settings, images: np.ndarray) -> Tensor:
    """uint8 NHWC data-stage images -> float NCHW in [-1, 1] at the first stage's resolution (CPU)."""
    return upsample(nhwc_to_model(images), first_stage_resolution(settings))


def decode_to_images(first_stage: FirstStage, diffusion: LatentDiffusion, latents: Tensor, *, image_size: int,
                     batch_size: int, device: torch.device | str) -> np.ndarray:
    """Latents -> uint8 NHWC images at the data size (decode with quantisation as LDM does, then area-average)."""
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


def _latent_batch(model: nn.Module, diffusion: LatentDiffusion, start: int, rows: int, *, shape: tuple[int, ...],
                  count: int, use_ddim: bool, eta: float, seed: int, device: torch.device | str) -> Tensor:
    """Latents start .. start+rows-1: their noise streams depend on (seed, index) and (seed, batch start) only."""
    from training.eval.sampling import sample_seed

    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, start + i)))
                         for i in range(rows)]).to(device)
    generator = torch.Generator(device=torch.device(device)).manual_seed(sample_seed(seed, ETA_STREAM + start))
    with torch.no_grad():
        z = diffusion.sample(model, (rows, *shape), generator=generator, steps=count, eta=eta, device=device,
                             noise=noise, use_ddim=use_ddim)
    return z.float().cpu()


def sample_latents(model: nn.Module, diffusion: LatentDiffusion, n: int, *, shape: tuple[int, ...], steps: str,
                   use_ddim: bool, eta: float, batch_size: int, seed: int, device: torch.device | str) -> Tensor:
    """`n` latents from `model`: DDIM with `steps` (LDM's uniform rule; '' = T) or the full ancestral chain.

    Each sample's starting noise comes from its own (seed, index) stream, so a seed gives the same latents whatever
    the batch size.
    """
    model.eval()
    count = int(steps) if steps else diffusion.num_timesteps
    return torch.cat([_latent_batch(model, diffusion, start, min(batch_size, n - start), shape=shape, count=count,
                                    use_ddim=use_ddim, eta=eta, seed=seed, device=device)
                      for start in range(0, n, batch_size)])


class LatentSpace:
    name = "latent"
    inputs_name = "latents"
    synthesis_ddim = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._first_stage: nn.Module | None = None

    def model_shape(self) -> tuple[int, int, int]:
        return latent_shape(self.settings)

    def diffusion_config(self) -> dict[str, Any]:
        from training.diffusion.ldm import LatentDiffusionConfig

        latent = self.settings.teacher.latent
        from dkdm.first_stage_info import read_scale_factor

        scale = read_scale_factor(require(AUTOENCODER_INFO, "dkdm autoencoder"))
        return {"space": "latent", **LatentDiffusionConfig(self.settings.diffusion.steps, latent.linear_start,
                                                           latent.linear_end, scale).to_dict()}

    def process(self, config: Mapping[str, Any] | None = None, device: torch.device | str = "cpu"
                ) -> LatentDiffusion:
        return make_latent_diffusion(config if config is not None else self.diffusion_config(), device)

    def load_model(self, path: Path, device: torch.device, *, ema: bool = True
                   ) -> tuple[nn.Module, LatentDiffusion, CheckpointMeta]:
        return load_latent_model(path, device, ema=ema)

    def load_teacher(self, device: torch.device) -> tuple[nn.Module, LatentDiffusion]:
        model, diffusion, _ = load_latent_model(require(TEACHER_FILE, "dkdm teacher"), device)
        for p in model.parameters():  # the teacher is never trained
            p.requires_grad_(False)
        return model, diffusion

    def import_teacher(self, checkpoint: Path, preset: str, out: Path) -> dict[str, Any]:
        """The released CompVis `model.ckpt` (EMA UNet weights); its schedule buffers must equal the profile's
        process, or sampling would silently be wrong."""
        from training.models import get_preset, save_checkpoint
        from training.models.ldm_checkpoint import load_ldm_checkpoint

        config = self.diffusion_config()
        loaded = load_ldm_checkpoint(checkpoint, unet_config=get_preset(preset), ema=True,
                                     diffusion=self.process(config))
        save_checkpoint(out, loaded.unet, model_config=get_preset(preset), diffusion_config=config,
                        provenance={"source": "import-ldm", "imported_from": str(checkpoint), "ema": loaded.ema_used,
                                    "profile": self.settings.profile})
        return {}

    def first_stage(self, device: torch.device) -> nn.Module:
        """The pipeline's autoencoder (eval mode, frozen), loaded once per space object."""
        if self._first_stage is None:
            from dkdm.first_stage_info import read_scale_factor
            from training.models import load_checkpoint

            # The record is written last by the autoencoder stage: an unfinished or pixel record says what to run.
            read_scale_factor(require(AUTOENCODER_INFO, "dkdm autoencoder"))
            model, _ = load_checkpoint(require(FIRST_STAGE_FILE, "dkdm autoencoder"), ema=False, device=device)
            for p in model.parameters():
                p.requires_grad_(False)
            self._first_stage = model.eval()
        return self._first_stage

    def training_images(self, images: np.ndarray) -> Tensor:
        """At the first stage's resolution (CPU): the encoder's input."""
        return first_stage_images(self.settings, images)

    def encoder(self, device: torch.device, precision: str) -> Encoder:
        from training.distill.latent import first_stage_encoder

        return first_stage_encoder(self.first_stage(device), self.process(), device=device, precision=precision)

    def encode_all(self, images: np.ndarray, device: torch.device) -> Tensor:
        from training.train.first_stage import encode_all

        z = encode_all(self.first_stage(device), self.training_images(images), batch_size=ENCODE_BATCH, device=device)
        return z * self.process().scale_factor

    def to_images(self, x: Tensor, *, batch_size: int, device: torch.device) -> np.ndarray:
        return decode_to_images(self.first_stage(device), self.process(), x, image_size=self.settings.data.image_size,
                                batch_size=batch_size, device=device)

    def sampling_steps(self, process: Process, steps: str, use_ddim: bool) -> int:
        count = steps.removeprefix("ddim")
        if use_ddim and count and not count.isdigit():
            # Settings validate a latent profile's evaluate/reference respacing: only `dkdm sample --steps` gets here.
            raise DkdmError(f"--steps: {steps!r} is not a step count; a latent checkpoint takes DDIM steps like '50'")
        return int(count) if use_ddim and count else process.num_timesteps

    def sample(self, model: nn.Module, process: Process, n: int, *, steps: str, use_ddim: bool, eta: float,
               clip_denoised: bool, batch_size: int, seed: int, device: torch.device,
               progress: bool = False, dist: DistContext | None = None) -> np.ndarray | None:
        """DDIM (or ancestral) latents of the model's own shape, decoded by this profile's first stage; under
        `dist` each rank samples and decodes its share of the batches (rank 0 gets them all, the others None)."""
        from training.eval.shard import sample_sharded

        assert isinstance(process, LatentDiffusion)
        config = model.config  # type: ignore[union-attr]
        shape = (int(config.in_channels), int(config.image_size), int(config.image_size))
        count = self.sampling_steps(process, str(steps), use_ddim)
        first_stage = self.first_stage(device)
        model.eval()

        def draw(start: int, rows: int) -> Tensor:
            z = _latent_batch(model, process, start, rows, shape=shape, count=count, use_ddim=use_ddim, eta=eta,
                              seed=seed, device=device)
            return torch.from_numpy(decode_to_images(first_stage, process, z, image_size=self.settings.data.image_size,
                                                     batch_size=batch_size, device=device))

        images = sample_sharded(draw, n, batch_size, dist)
        return None if images is None else images.numpy()

    def synthesize(self, teacher: nn.Module, process: Process, count: int, out: Path, *, steps: str,
                   batch_size: int, seed: int, clip_denoised: bool, device: torch.device, progress: bool,
                   dist: DistContext | None = None) -> Path:
        """Teacher DDIM latents (eta 0), float16; the paper's latent D' uses DDIM-100."""
        from training.distill.latent import synthesize_latents

        assert isinstance(process, LatentDiffusion)
        return synthesize_latents(teacher, process, count, out, latent_shape=self.model_shape(),
                                  batch_size=batch_size, device=device, seed=seed,
                                  steps=self.sampling_steps(process, steps, True), progress=progress, dist=dist)
