"""Named latent-space architectures (LDM UNets and VQ-f4 autoencoders), as `{"family": ..., **reference config}`.

The configs are the constructor arguments of the CompVis / DKDM yamls (see the reference manifests); the expected
parameter counts are recorded so that a wrong build is caught by a test rather than by a failing checkpoint load.
"""
from __future__ import annotations

import copy
from typing import Any

_TEACHER_274M = {
    "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 224,
    "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 4], "num_head_channels": 32,
}

LATENT_PRESETS: dict[str, dict[str, Any]] = {
    # CompVis celeba256 / ffhq256 `unet_config` (identical), the DKDM teachers; 64x64x3 latents.
    "ldm-celebahq-274M-teacher": {"family": "ldm-unet", **_TEACHER_274M},
    "ldm-ffhq-274M-teacher": {"family": "ldm-unet", **_TEACHER_274M},
    # DKDM distill yamls' student: the teacher with 128 channels (the paper calls it 86M; it has 89,535,619).
    "ldm-86M-student": {"family": "ldm-unet", **_TEACHER_274M, "model_channels": 128},
    # The first stage of both LDMs (f = 4, 8192 codes); 256x256 image <-> 3x64x64 latent.
    "vq-f4": {
        "family": "vq-f4", "embed_dim": 3, "n_embed": 8192,
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                     "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0},
    },
    # Cheap members of the same families (golden fixtures, CPU profiles): 16x16 latents, 32x32 images.
    "ldm-unet-small": {
        "family": "ldm-unet", "image_size": 16, "in_channels": 3, "out_channels": 3, "model_channels": 32,
        "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16,
    },
    "vq-f4-small": {
        "family": "vq-f4", "embed_dim": 3, "n_embed": 64,
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
    },
    # The CPU latent profiles (dkdm profiles `latent`, `latent-ci`): the 8x8 digits upsampled 2x to 16x16x1, so f = 4
    # gives 3x4x4 latents (48 numbers for 64 pixels: a real compression, unlike 32x32 -> 3x8x8 = 192). 32 channels
    # is the GroupNorm floor; ch_mult [1, 1, 1] keeps f = 4 at a third of vq-f4-small's cost.
    "vq-f4-digits": {
        "family": "vq-f4", "embed_dim": 3, "n_embed": 128,
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 1, "out_ch": 1, "ch": 32,
                     "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
    },
    "ldm-digits-teacher": {
        "family": "ldm-unet", "image_size": 4, "in_channels": 3, "out_channels": 3, "model_channels": 32,
        "attention_resolutions": [2], "num_res_blocks": 2, "channel_mult": [1, 2], "num_head_channels": 32,
    },
    # ~0.29x the teacher (the paper's latent pair: 86M / 274M = 0.31x).
    "ldm-digits-student": {
        "family": "ldm-unet", "image_size": 4, "in_channels": 3, "out_channels": 3, "model_channels": 32,
        "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 1], "num_head_channels": 32,
    },
}

LATENT_PRESET_PARAMETERS: dict[str, int] = {
    "ldm-celebahq-274M-teacher": 274_056_163,
    "ldm-ffhq-274M-teacher": 274_056_163,
    "ldm-86M-student": 89_535_619,
    "vq-f4": 55_322_782,
    "ldm-unet-small": 702_499,
    "vq-f4-small": 951_230,
    "vq-f4-digits": 290_588,
    "ldm-digits-teacher": 1_002_883,
    "ldm-digits-student": 285_667,
}

# Paper size labels (Table 7); None for the autoencoders and the test-scale presets.
LATENT_PRESET_LABELS: dict[str, str | None] = {
    "ldm-celebahq-274M-teacher": "274M", "ldm-ffhq-274M-teacher": "274M", "ldm-86M-student": "86M",
    "vq-f4": None, "ldm-unet-small": None, "vq-f4-small": None,
    "vq-f4-digits": None, "ldm-digits-teacher": None, "ldm-digits-student": None,
}


def get_latent_preset(name: str) -> dict[str, Any]:
    """A fresh copy of the preset's config (safe to modify)."""
    if name not in LATENT_PRESETS:
        raise KeyError(f"unknown latent preset {name!r}; known: {sorted(LATENT_PRESETS)}")
    return copy.deepcopy(LATENT_PRESETS[name])
