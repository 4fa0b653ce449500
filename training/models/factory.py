"""`create_model`: one entry point from a config (mapping or ModelConfig) to a network of any family."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from .adm_unet import ADMUNet
from .config import ADMUNetConfig, DiffusersUNetConfig, DiTConfig, ModelConfig, parse_model_config
from .dit import DiT

# Latent families live in modules owned elsewhere; importing them lazily keeps the pixel-space path independent.
_LATENT_BUILDERS = {"ldm-unet": ("training.models.ldm_unet", "LDMUNet"), "vq-f4": ("training.models.vq", "VQModel")}


def create_model(config: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build a network from `{"family": ..., **config}` (reference vocabulary) or a ModelConfig.

    Parameters are created on the current default device, so `with torch.device("meta"):` builds even the
    295M preset for free (shapes only). `model(x, t)` returns eps (+ variance channels with learn_sigma).
    """
    cfg = parse_model_config(config)
    if isinstance(cfg, ADMUNetConfig):
        return ADMUNet(cfg)
    if isinstance(cfg, DiTConfig):
        return DiT(cfg)
    if isinstance(cfg, DiffusersUNetConfig):
        from .diffusers_unet import DiffusersUNet

        return DiffusersUNet(cfg.to_dict())
    module_name, class_name = _LATENT_BUILDERS[cfg.family]
    try:
        builder = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"family: {cfg.family!r} needs {module_name}.{class_name}, "
                         f"which is not available ({err})") from None
    return builder.from_config(cfg.to_dict())
