"""Pixel space: the networks see the images themselves, in [-1, 1]."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dkdm.settings import Settings
from dkdm.stages.common import TEACHER_FILE, require
from training.diffusion import GaussianDiffusion, Process, create_diffusion
from training.distill.sources import Encoder
from training.models.checkpoint import CheckpointMeta
from training.train.distributed import DistContext


def _respacing(steps: str, use_ddim: bool) -> str:
    """A step count means DDIM's integer stride when sampling with DDIM ('10' -> 'ddim10')."""
    return f"ddim{steps}" if use_ddim and steps.isdigit() else steps


class PixelSpace:
    name = "pixel"
    inputs_name = "images"
    synthesis_ddim = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def model_shape(self) -> tuple[int, int, int]:
        data = self.settings.data
        return (data.channels, data.image_size, data.image_size)

    def diffusion_config(self) -> dict[str, Any]:
        return self.settings.diffusion.to_dict()

    def process(self, config: Mapping[str, Any] | None = None, device: torch.device | str = "cpu"
                ) -> GaussianDiffusion:
        # The tables follow each call's tensors to their device (cached there), so `device` needs no work here.
        return create_diffusion(**dict(config if config is not None else self.diffusion_config()))

    def load_model(self, path: Path, device: torch.device, *, ema: bool = True
                   ) -> tuple[nn.Module, GaussianDiffusion, CheckpointMeta]:
        from training.models import load_checkpoint

        model, meta = load_checkpoint(path, ema=ema, device=device)
        return model, self.process(meta.diffusion_config), meta

    def load_teacher(self, device: torch.device) -> tuple[nn.Module, GaussianDiffusion]:
        model, _, _ = self.load_model(require(TEACHER_FILE, "dkdm teacher"), device)
        # The pool and the students walk the profile's process (settings checked the teacher against it).
        return model, self.process()

    def import_teacher(self, checkpoint: Path, preset: str, out: Path) -> dict[str, Any]:
        from training.models import import_teacher, read_checkpoint_meta

        path = import_teacher(checkpoint, preset, out, diffusion_config=self.diffusion_config())
        return {"dkdm.import.sha256": read_checkpoint_meta(path).get("provenance", {}).get("imported_sha256", "")}

    def first_stage(self, device: torch.device) -> None:
        return None

    def training_images(self, images: np.ndarray) -> Tensor:
        from training.data import to_model_range

        return to_model_range(images)

    def encoder(self, device: torch.device, precision: str) -> Encoder | None:
        return None

    def encode_all(self, images: np.ndarray, device: torch.device) -> Tensor:
        return self.training_images(images)

    def to_images(self, x: Tensor, *, batch_size: int, device: torch.device) -> np.ndarray:
        from training.data import from_model_range

        if x.dtype == torch.uint8:  # a quantised synthetic set is NCHW bytes already
            return x.permute(0, 2, 3, 1).contiguous().numpy()
        return from_model_range(x)

    def sampling_steps(self, process: Process, steps: str, use_ddim: bool) -> int:
        return self._respaced(process, steps, use_ddim).num_timesteps

    def _respaced(self, process: Process, steps: str, use_ddim: bool) -> GaussianDiffusion:
        assert isinstance(process, GaussianDiffusion)
        return create_diffusion(**{**process.config.to_dict(), "timestep_respacing": _respacing(steps, use_ddim)})

    def sample(self, model: nn.Module, process: Process, n: int, *, steps: str, use_ddim: bool, eta: float,
               clip_denoised: bool, batch_size: int, seed: int, device: torch.device,
               progress: bool = False, dist: DistContext | None = None) -> np.ndarray | None:
        from training.eval.sampling import generate_samples

        return generate_samples(model, self._respaced(process, steps, use_ddim), n, batch_size=batch_size, seed=seed,
                                device=device, use_ddim=use_ddim, eta=eta, clip_denoised=clip_denoised,
                                progress=progress, dist=dist)

    def synthesize(self, teacher: nn.Module, process: Process, count: int, out: Path, *, steps: str,
                   batch_size: int, seed: int, clip_denoised: bool, device: torch.device, progress: bool,
                   dist: DistContext | None = None) -> Path:
        from training.distill.baselines import synthesize_dataset

        return synthesize_dataset(teacher, self._respaced(process, steps, False), count, out,
                                  image_shape=self.model_shape(), batch_size=batch_size, device=device, seed=seed,
                                  clip_denoised=clip_denoised, progress=progress, dist=dist)
