"""The space a profile's diffusion runs in: pixels, or a first stage's latents (the paper's LDM teachers: Table 9,
supplementary §10).

A space knows the model-input shape, how to build the process, how to load the teacher (and the first stage), how
images become model inputs and back, and how to sample; nothing stage-specific. Every stage is written once against
`Space`, so pixel and latent profiles run the same stage modules.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from dkdm.settings import Settings
from training.diffusion import Process
from training.distill.sources import Encoder
from training.models.checkpoint import CheckpointMeta
from training.train.distributed import DistContext

SpaceName = Literal["pixel", "latent"]


class Space(Protocol):
    name: SpaceName
    inputs_name: str  # what the networks see, for messages: "images" or "latents"
    synthesis_ddim: bool  # D' is drawn with DDIM (latent, the paper's DDIM-100) or ancestral steps (pixel, IDDPM)

    def model_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the networks take: images, or the first stage's latents."""
        ...

    def diffusion_config(self) -> dict[str, Any]:
        """The profile's process as every checkpoint of this space records it."""
        ...

    def process(self, config: Mapping[str, Any] | None = None, device: torch.device | str = "cpu") -> Process:
        """The process of `config` (a checkpoint's record), or the profile's own, with its tables on `device`."""
        ...

    def load_model(self, path: Path, device: torch.device, *, ema: bool = True
                   ) -> tuple[nn.Module, Process, CheckpointMeta]:
        ...

    def load_teacher(self, device: torch.device) -> tuple[nn.Module, Process]:
        """The pipeline's teacher, frozen, and the process it walks."""
        ...

    def import_teacher(self, checkpoint: Path, preset: str, out: Path) -> dict[str, Any]:
        """Convert a released checkpoint into `out`; returns the tags worth recording."""
        ...

    def first_stage(self, device: torch.device) -> nn.Module | None:
        ...

    def training_images(self, images: np.ndarray) -> Tensor:
        """uint8 NHWC data -> the float NCHW images training reads (before any encoding)."""
        ...

    def encoder(self, device: torch.device, precision: str) -> Encoder | None:
        """training_images -> model inputs, batch by batch; None when they are the same."""
        ...

    def encode_all(self, images: np.ndarray, device: torch.device) -> Tensor:
        """uint8 NHWC data -> model inputs for the whole set."""
        ...

    def to_images(self, x: Tensor, *, batch_size: int, device: torch.device) -> np.ndarray:
        """Model inputs (float, or the uint8 of a quantised synthetic set) -> uint8 NHWC at the data size."""
        ...

    def sampling_steps(self, process: Process, steps: str, use_ddim: bool) -> int:
        ...

    def sample(self, model: nn.Module, process: Process, n: int, *, steps: str, use_ddim: bool, eta: float,
               clip_denoised: bool, batch_size: int, seed: int, device: torch.device,
               progress: bool = False, dist: DistContext | None = None) -> np.ndarray | None:
        """`n` uint8 NHWC images from `model`; sample i depends on (seed, i) only, not on the batch size. Under
        `dist` the ranks share the batches and rank 0 gets all n images (the same as one process); others get None."""
        ...

    def synthesize(self, teacher: nn.Module, process: Process, count: int, out: Path, *, steps: str,
                   batch_size: int, seed: int, clip_denoised: bool, device: torch.device, progress: bool,
                   dist: DistContext | None = None) -> Path:
        """The teacher's set D' as stored model inputs (resumable; under `dist` the ranks share the batches and rank 0
        writes the file)."""
        ...


@dataclass(frozen=True)
class SpaceSampler:
    """One sampler of a space (steps, DDIM or not, eta, clipping) bound to a process: the `ImageSampler` that a
    periodic FD' draws a student's images with."""

    space: Space
    process: Process
    steps: str
    use_ddim: bool
    eta: float
    clip_denoised: bool

    def sample_images(self, model: nn.Module, n: int, *, batch_size: int, seed: int,
                      device: torch.device | str) -> np.ndarray:
        return self.space.sample(model, self.process, n, steps=self.steps, use_ddim=self.use_ddim, eta=self.eta,
                                 clip_denoised=self.clip_denoised, batch_size=batch_size, seed=seed,
                                 device=torch.device(device))


def space_for(settings: Settings, name: SpaceName | None = None) -> Space:
    """The profile's space, or the one named (a checkpoint's sidecar says which it was trained in)."""
    if (name or settings.space) == "latent":
        from dkdm.spaces.latent import LatentSpace

        return LatentSpace(settings)
    from dkdm.spaces.pixel import PixelSpace

    return PixelSpace(settings)


def checkpoint_space(path: Path) -> SpaceName:
    """The space a checkpoint's sidecar records (pixel when it says none)."""
    from dkdm.errors import DkdmError
    from training.models.checkpoint import CheckpointError, read_checkpoint_meta

    try:
        meta = read_checkpoint_meta(path)
    except CheckpointError as err:
        raise DkdmError(f"checkpoint: {err}") from None
    return "latent" if meta["diffusion_config"].get("space") == "latent" else "pixel"
