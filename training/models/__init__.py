"""Networks of dkdm: ADM UNet and DiT (pixel space), LDM UNet and VQ-f4 (latent space), presets and checkpoints.

Public API (kept stable, other parts and outside checks call it):
    create_model(config) -> nn.Module          config: {"family": ..., **reference config keys} or a ModelConfig
    get_preset(name) -> dict, list_presets(), get_preset_info(name), count_parameters(model)
    save_checkpoint / load_checkpoint / read_checkpoint_meta   (ours: .safetensors + .json sidecar)
    load_foreign_state_dict / load_into / import_teacher       (foreign ADM / DDPM-IP .pt files)
"""
from __future__ import annotations

from .adm_unet import ADMUNet
from .checkpoint import (
                         CheckpointError,
                         CheckpointMeta,
                         build_from_state_dict,
                         load_checkpoint,
                         load_into,
                         read_checkpoint_meta,
                         read_checkpoint_tensors,
                         save_checkpoint,
)
from .config import ADMUNetConfig, DiTConfig, ModelConfig, parse_model_config
from .dit import DiT
from .factory import create_model
from .foreign import import_teacher, load_foreign_state_dict
from .presets import Preset, count_parameters, get_preset, get_preset_info, list_presets

__all__ = [
    "ADMUNet", "ADMUNetConfig", "CheckpointError", "CheckpointMeta", "DiT", "build_from_state_dict", "DiTConfig",
    "ModelConfig", "Preset",
    "count_parameters", "create_model", "get_preset", "get_preset_info", "import_teacher", "list_presets",
    "load_checkpoint", "load_foreign_state_dict", "load_into", "parse_model_config", "read_checkpoint_meta",
    "read_checkpoint_tensors", "save_checkpoint",
]
