"""Our networks as diffusers `UNet2DModel`s, where an exact equivalent exists (what `dkdm export` writes).

* `diffusers-unet2d` students are a UNet2DModel already.
* ADM UNets map exactly when the first level keeps the base width (`channel_mult[0] == 1`: diffusers embeds
  timesteps at the first block's width, ADM at `num_channels`) and every attention layer has the same head
  width (UNet2DModel has one `attention_head_dim`). Block for block the two are the same network: resnet
  blocks with scale-shift norm, resnet or conv resampling, group-norm attention with a residual, the same
  sinusoidal embedding (cosine half first, no frequency shift).
* DiT students are not exportable: diffusers' `DiTTransformer2DModel` always adds a class embedding to the
  timestep embedding and needs class labels, which `DDPMPipeline` never passes; our DiT is unconditional.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .config import ADMUNetConfig, DiffusersUNetConfig, ModelConfig
from .diffusers_unet import require_diffusers, unet_kwargs


def _head_widths(cfg: ADMUNetConfig) -> set[int]:
    mult = cfg.channel_mult
    widths = set()
    heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
    levels = [i for i in range(len(mult)) if 2 ** i in set(cfg.attention_ds)]
    for channels, heads in [(mult[i] * cfg.num_channels, h) for i in levels for h in (cfg.num_heads, heads_up)] + [
            (mult[-1] * cfg.num_channels, cfg.num_heads)]:
        widths.add(cfg.num_head_channels if cfg.num_head_channels != -1 else channels // heads)
    return widths


def adm_unet2d_config(cfg: ADMUNetConfig) -> dict[str, Any]:
    """The UNet2DModel arguments of an ADM UNet, or a one-line ValueError saying why there is none."""
    if cfg.channel_mult[0] != 1:
        raise ValueError(f"channel_mult: starts with {cfg.channel_mult[0]}, UNet2DModel embeds timesteps at the first "
                         "block's width, so only channel_mult[0] == 1 maps exactly")
    widths = _head_widths(cfg)
    if len(widths) != 1:
        raise ValueError(f"num_heads: attention head widths {sorted(widths)} differ between levels; UNet2DModel has "
                         "one attention_head_dim (use num_head_channels)")
    attn = [2 ** i in set(cfg.attention_ds) for i in range(len(cfg.channel_mult))]
    plain_down, plain_up = (("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if cfg.resblock_updown
                            else ("DownBlock2D", "UpBlock2D"))
    return {
        "sample_size": cfg.image_size, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "block_out_channels": [m * cfg.num_channels for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(attn)],
        "downsample_type": "resnet" if cfg.resblock_updown else "conv",
        "upsample_type": "resnet" if cfg.resblock_updown else "conv",
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "attention_head_dim": widths.pop(), "norm_num_groups": 32, "attn_norm_num_groups": 32, "norm_eps": 1e-5,
        "dropout": cfg.dropout, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    }


def _resnet(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
    for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")):
        yield f"{ours}.{a}", f"{theirs}.{b}"


def _module_pairs(cfg: ADMUNetConfig) -> Iterator[tuple[str, str, str]]:
    """(our prefix, diffusers prefix, kind) for every parameterised module, in both networks' order."""
    yield "time_embed.0", "time_embedding.linear_1", "plain"
    yield "time_embed.2", "time_embedding.linear_2", "plain"
    yield "input_blocks.0.0", "conv_in", "plain"
    attn = [2 ** i in set(cfg.attention_ds) for i in range(len(cfg.channel_mult))]
    k = 1
    for level in range(len(cfg.channel_mult)):
        for j in range(cfg.num_res_blocks):
            yield f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "resnet"
            if attn[level]:
                yield f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attention"
            k += 1
        if level != len(cfg.channel_mult) - 1:
            kind = "resnet" if cfg.resblock_updown else "down"
            yield f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", kind
            k += 1
    yield "middle_block.0", "mid_block.resnets.0", "resnet"
    yield "middle_block.1", "mid_block.attentions.0", "attention"
    yield "middle_block.2", "mid_block.resnets.1", "resnet"
    k = 0
    for up, level in enumerate(reversed(range(len(cfg.channel_mult)))):
        for j in range(cfg.num_res_blocks + 1):
            yield f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{j}", "resnet"
            layer = 1
            if attn[level]:
                yield f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{j}", "attention"
                layer = 2
            if level and j == cfg.num_res_blocks:
                yield (f"output_blocks.{k}.{layer}", f"up_blocks.{up}.upsamplers.0",
                       "resnet" if cfg.resblock_updown else "plain")
            k += 1
    yield "out.0", "conv_norm_out", "plain"
    yield "out.2", "conv_out", "plain"


def adm_state_to_unet2d(cfg: ADMUNetConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ADM state dict under diffusers' UNet2DModel key names (and layouts)."""
    out: dict[str, torch.Tensor] = {}
    heads = {}
    for ours, theirs, kind in _module_pairs(cfg):
        if kind == "resnet":
            for a, b in _resnet(ours, theirs):
                for p in ("weight", "bias"):
                    if f"{a}.{p}" in state:
                        out[f"{b}.{p}"] = state[f"{a}.{p}"]
        elif kind == "attention":
            channels = state[f"{ours}.qkv.weight"].shape[1]
            width = next(iter(_head_widths(cfg)))
            heads[ours] = channels // width
            w, b = state[f"{ours}.qkv.weight"][:, :, 0], state[f"{ours}.qkv.bias"]
            if cfg.use_new_attention_order:
                parts = w.chunk(3, dim=0), b.chunk(3, dim=0)
            else:  # legacy order: per head (q, k, v) blocks, regrouped into all-heads q, k, v
                w3 = w.reshape(heads[ours], 3, width, channels)
                b3 = b.reshape(heads[ours], 3, width)
                parts = ([w3[:, i].reshape(channels, channels) for i in range(3)],
                         [b3[:, i].reshape(channels) for i in range(3)])
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                out[f"{theirs}.{name}.weight"], out[f"{theirs}.{name}.bias"] = parts[0][i], parts[1][i]
            out[f"{theirs}.group_norm.weight"] = state[f"{ours}.norm.weight"]
            out[f"{theirs}.group_norm.bias"] = state[f"{ours}.norm.bias"]
            out[f"{theirs}.to_out.0.weight"] = state[f"{ours}.proj_out.weight"][:, :, 0]
            out[f"{theirs}.to_out.0.bias"] = state[f"{ours}.proj_out.bias"]
        else:
            src = f"{ours}.op" if kind == "down" else f"{ours}.conv" if f"{ours}.conv.weight" in state else ours
            dst = f"{theirs}.conv" if kind == "down" or src.endswith(".conv") else theirs
            for p in ("weight", "bias"):
                out[f"{dst}.{p}"] = state[f"{src}.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def to_unet2d(model: nn.Module, cfg: ModelConfig) -> Any:
    """A diffusers UNet2DModel computing exactly what `model` computes, or a one-line ValueError why not."""
    diffusers = require_diffusers()
    if isinstance(cfg, DiffusersUNetConfig):
        unet = diffusers.UNet2DModel(**unet_kwargs(cfg.to_dict()))
        unet.load_state_dict(model.unet.state_dict(), strict=True)
        return unet
    if isinstance(cfg, ADMUNetConfig):
        unet = diffusers.UNet2DModel(**adm_unet2d_config(cfg))
        unet.load_state_dict(adm_state_to_unet2d(cfg, model.state_dict()), strict=True)
        return unet
    if cfg.family == "dit":
        raise ValueError("dit: not exportable to diffusers: DiTTransformer2DModel is class-conditional (it adds a "
                         "class embedding and needs class labels, which DDPMPipeline never passes)")
    raise ValueError(f"{cfg.family}: no diffusers UNet2DModel equivalent; not exportable")
