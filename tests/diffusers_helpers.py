"""Tiny diffusers models with random weights, built by diffusers itself (shared by the diffusers tests)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed: pip install -e '.[diffusers]'")

TINY_UNET = {"sample_size": 8, "in_channels": 3, "block_out_channels": (32, 64), "layers_per_block": 1,
             "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
             "attention_head_dim": 32, "norm_num_groups": 32}


def tiny_pipeline(folder: Path, *, variance_type: str = "fixed_small", beta_schedule: str = "linear",
                  steps: int = 1000, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a DDPMPipeline with a random UNet2DModel (out channels follow the variance type) to `folder`."""
    torch.manual_seed(seed)
    out_channels = 6 if variance_type == "learned_range" else 3
    unet = diffusers.UNet2DModel(**{**TINY_UNET, "sample_size": sample_size, "out_channels": out_channels})
    with torch.no_grad():  # zero-initialised output layers would hide half the network from the comparison
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=steps, beta_schedule=beta_schedule,
                                        variance_type=variance_type, beta_start=0.0001, beta_end=0.02)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder
