"""Named model presets: the paper's teachers and students (configs exactly as the reference JSONs) and CPU presets.

The CPU presets serve the embedded default dataset (scikit-learn digits: 8x8, 1 channel) and the CI pipeline.
GroupNorm with 32 groups makes 32 channels the narrowest ADM UNet, so the smallest UNet (`ci-teacher`) has ~183k
parameters; the CI student is a tiny DiT (~50k).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# Diffusion yamls of the reference presets, verbatim (informational: the diffusion engineer owns their meaning).
_CIFAR10_DIFFUSION = {
    "learn_sigma": True, "diffusion_steps": 1000, "noise_schedule": "cosine", "timestep_respacing": "1000",
    "use_ddim": False, "use_kl": False, "predict_xstart": False, "rescale_timesteps": False,
    "rescale_learned_sigmas": False, "clip_denoised": True, "clip_last": False, "clip_first": False,
}
_CELEBA64_DIFFUSION = {**_CIFAR10_DIFFUSION, "rescale_learned_sigmas": True}

# Keys every reference ADM preset shares; the per-preset part below carries only what differs.
_ADM_PAPER = {
    "num_heads": 4, "num_heads_upsample": -1, "class_cond": False, "use_checkpoint": False,
    "use_scale_shift_norm": True, "resblock_updown": True, "use_fp16": True, "use_new_attention_order": True,
    "learn_sigma": True, "in_channels": 3, "out_channels": 6, "channel_mult_yaml": "",
}


def _adm(image_size: int, channels: int, res_blocks: int, head_channels: int, dropout: float,
         *, from_yaml: bool = True) -> dict[str, Any]:
    cifar = image_size == 32
    config = {
        "image_size": image_size, "num_channels": channels, "num_res_blocks": res_blocks,
        "channel_mult": [1, 2, 2, 2] if cifar else [1, 2, 3, 4], "num_heads": 4, "num_head_channels": head_channels,
        "num_heads_upsample": -1, "attention_resolutions": "16,8" if cifar else "32,16,8", "dropout": dropout,
        **{k: v for k, v in _ADM_PAPER.items() if k not in ("num_heads", "num_heads_upsample")},
    }
    if not from_yaml:  # the golden test model was built directly: fp32 and no yaml channel_mult record
        config["use_fp16"] = False
        del config["channel_mult_yaml"]
    return config


def _dit(input_size: int, patch: int, hidden: int, depth: int, heads: int, in_channels: int = 3) -> dict[str, Any]:
    return {
        "input_size": input_size, "patch_size": patch, "in_channels": in_channels, "hidden_size": hidden,
        "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "class_dropout_prob": 0.1, "num_classes": 1000,
        "learn_sigma": True, "use_class": False, "use_fp16": False, "image_size": input_size, "class_cond": False,
        "out_channels": 2 * in_channels, "model_name": "custom",
    }


def _digits_adm(channels: int, res_blocks: int, channel_mult: list[int], attention: str) -> dict[str, Any]:
    return {
        "image_size": 8, "num_channels": channels, "num_res_blocks": res_blocks, "channel_mult": channel_mult,
        "num_heads": 4, "num_head_channels": 32, "num_heads_upsample": -1, "attention_resolutions": attention,
        "dropout": 0.1, "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True,
        "resblock_updown": True, "use_fp16": False, "use_new_attention_order": True, "learn_sigma": True,
        "in_channels": 1, "out_channels": 2,
    }


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    config: dict[str, Any]
    paper_label: str | None
    num_parameters: int
    num_trainable_parameters: int
    description: str
    aliases: tuple[str, ...] = ()
    diffusion: dict[str, Any] | None = field(default=None)

    def model_config(self) -> dict[str, Any]:
        """`{"family": ..., **config}`, a fresh copy ready for `create_model`."""
        return {"family": self.family, **_deep_copy(self.config)}


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


_PRESETS: tuple[Preset, ...] = (
    Preset("cifar10-57M", "adm-unet", _adm(32, 128, 3, 32, 0.3), "57M", 57_094_662, 57_094_662,
           "CIFAR-10 / ImageNet-32 teacher (yaml/arch/57M-CNN.yaml)",
           ("cifar10-57M-teacher", "imagenet32-57M"), _CIFAR10_DIFFUSION),
    Preset("cifar10-44M", "adm-unet", _adm(32, 128, 2, 32, 0.3), "44M", 44_177_286, 44_177_286,
           "CIFAR-10 student (yaml/arch/44M-CNN.yaml)", (), _CIFAR10_DIFFUSION),
    Preset("cifar10-32M", "adm-unet", _adm(32, 96, 3, 32, 0.3), "32M", 32_136_582, 32_136_582,
           "CIFAR-10 student (yaml/arch/32M-CNN.yaml)", (), _CIFAR10_DIFFUSION),
    Preset("cifar10-24M", "adm-unet", _adm(32, 96, 2, 32, 0.3), "24M", 24_866_214, 24_866_214,
           "CIFAR-10 student (yaml/arch/24M-CNN.yaml)", (), _CIFAR10_DIFFUSION),
    Preset("cifar10-14M", "adm-unet", _adm(32, 64, 3, 32, 0.3), "14M", 14_301_446, 14_301_446,
           "CIFAR-10 / ImageNet-32 student (yaml/arch/14M-CNN.yaml)",
           ("cifar10-14M-student", "imagenet32-14M"), _CIFAR10_DIFFUSION),
    Preset("celeba64-295M", "adm-unet", _adm(64, 192, 3, 64, 0.1), "295M", 295_136_454, 295_136_454,
           "CelebA-64 teacher (yaml/arch/295M-CNN.yaml)", ("celeba64-295M-teacher",), _CELEBA64_DIFFUSION),
    Preset("celeba64-57M", "adm-unet", _adm(64, 96, 2, 32, 0.1), "57M (CelebA)", 57_213_606, 57_213_606,
           "CelebA-64 student (yaml/arch/57M-CNN-CelebA.yaml)", ("celeba64-57M-student",), _CELEBA64_DIFFUSION),
    Preset("dit-19M", "dit", _dit(32, 2, 384, 7, 6), "19M", 19_274_520, 19_176_216,
           "DiT student of paper Table 10 (7 layers, patch 2, hidden 384, 6 heads)", (), _CIFAR10_DIFFUSION),
    Preset("adm-small", "adm-unet",
           _adm(32, 32, 1, 16, 0.0, from_yaml=False), None, 1_965_894, 1_965_894,
           "golden/adm_small test model", (), _CIFAR10_DIFFUSION),
    Preset("dit-small", "dit", _dit(32, 4, 64, 2, 4), None, 191_776, 187_680,
           "golden/dit_small test model", (), _CIFAR10_DIFFUSION),
    Preset("digits-teacher", "adm-unet", _digits_adm(32, 2, [1, 2], "4"), None, 1_151_778, 1_151_778,
           "CPU teacher for the embedded 8x8 digits dataset"),
    Preset("digits-student", "adm-unet", _digits_adm(32, 1, [1, 1], "4"), None, 353_090, 353_090,
           "CPU UNet student for digits (~0.31x the teacher; 32 channels is the GroupNorm floor)"),
    Preset("digits-dit-student", "dit", _dit(8, 2, 64, 4, 4, in_channels=1), None, 329_544, 328_520,
           "CPU DiT student for digits (cross-architecture distillation)"),
    Preset("ci-teacher", "adm-unet", _digits_adm(32, 1, [1], ""), None, 183_106, 183_106,
           "smallest ADM UNet (digits shape), for the CI pipeline"),
    Preset("ci-student", "dit", _dit(8, 2, 32, 2, 2, in_channels=1), None, 50_152, 49_640,
           "tiny DiT student (digits shape), for the CI pipeline"),
)


def _latent_presets() -> tuple[Preset, ...]:
    # One registry for every family: the latent tables live beside their models, so they are folded in here.
    from training.models.latent_presets import LATENT_PRESET_LABELS, LATENT_PRESET_PARAMETERS, LATENT_PRESETS

    out = []
    for name, cfg in LATENT_PRESETS.items():
        config = {k: v for k, v in cfg.items() if k != "family"}
        count = LATENT_PRESET_PARAMETERS[name]
        out.append(Preset(name, cfg["family"], config, LATENT_PRESET_LABELS.get(name), count, count,
                          f"latent-space {cfg['family']} (CompVis LDM layout)"))
    return tuple(out)


_PRESETS = _PRESETS + _latent_presets()

_BY_NAME: dict[str, Preset] = {}
for _preset in _PRESETS:
    for _name in (_preset.name, *_preset.aliases):
        _BY_NAME[_name] = _preset


def list_presets(include_aliases: bool = False) -> list[str]:
    """Canonical preset names (and aliases if asked), in registry order."""
    if include_aliases:
        return list(_BY_NAME)
    return [p.name for p in _PRESETS]


def get_preset_info(name: str) -> Preset:
    """The Preset record (config, paper label, expected parameter counts, aliases) for a name or alias.

    An ArchRef (a user or inline architecture) describes itself; its counts are measured on the meta device.
    """
    from .arch import ArchRef, count_config_parameters

    if isinstance(name, ArchRef):
        config = {k: v for k, v in name.config.items() if k != "family"}
        count = count_config_parameters(name.config)
        return Preset(str(name), name.config["family"], config, None, count, count, f"{name.origin} architecture")
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_presets())}"
        raise ValueError(f"preset: unknown name {name!r}{hint}") from None


def get_preset(name: str) -> dict[str, Any]:
    """`{"family": ..., **config}` for a preset name or alias (a fresh dict, safe to modify)."""
    return get_preset_info(name).model_config()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on meta-device models); frozen ones only counted unless trainable_only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
