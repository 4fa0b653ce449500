"""ADM UNet (guided-diffusion `UNetModel`, unconditional) with the reference state-dict layout.

Module names and registration order follow the reference key names (`input_blocks.i.j`, `middle_block.k`,
`output_blocks.i.j`, `in_layers.0/2`, `emb_layers.1`, `out_layers.0/3`, ...) so that public ADM / DDPM-IP
checkpoints load unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ADMUNetConfig, parse_model_config
from .nn import (
    TimestepBlock,
    TimestepSequential,
    attention,
    batch_timesteps,
    normalization,
    timestep_embedding,
    zero_module,
)


class ResBlock(TimestepBlock):
    """GN-SiLU-[resample]-conv, timestep (scale, shift) modulation, GN-SiLU-dropout-conv, plus a skip path."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, *,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = "up" if up else "down" if down else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(self._resample(act_in(norm_in(x))))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, act_out, drop_out, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_out(h) * (1 + scale) + shift
        else:
            h = norm_out(h + emb_out)
        h = conv_out(drop_out(act_out(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, *, new_order: bool) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"num_head_channels: {num_head_channels} does not divide {channels} channels")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide {channels} channels")
        self.new_order = new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        heads, tokens = self.num_heads, flat.shape[-1]
        if self.new_order:
            # q, k, v are contiguous channel thirds, each then split into heads.
            q, k, v = (part.reshape(b, heads, c // heads, tokens) for part in qkv.chunk(3, dim=1))
        else:
            # Legacy order: the channels are split into heads first, each head holding its own (q, k, v).
            q, k, v = qkv.reshape(b, heads, 3 * c // heads, tokens).chunk(3, dim=2)
        out = attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, tokens)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ADMUNet(nn.Module):
    """Unconditional ADM UNet; `forward(x, t)` returns eps (+ variance channels when learn_sigma)."""

    def __init__(self, config: ADMUNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.num_channels
        emb_dim = 4 * mc
        attention_ds = set(config.attention_ds)
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, config.dropout, ch_out,
                            use_scale_shift_norm=config.use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, config.num_head_channels, new_order=config.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = first_ch = int(config.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, config.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(
                    res(ch, ch, down=True) if config.resblock_updown else Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, config.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if config.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(first_ch, config.out_channels, 3, padding=1)))

    @classmethod
    def from_config(cls, config: ADMUNetConfig | Mapping[str, Any]) -> ADMUNet:
        cfg = parse_model_config(config if not isinstance(config, Mapping) else {"family": "adm-unet", **config})
        if not isinstance(cfg, ADMUNetConfig):
            raise ValueError(f"family: expected 'adm-unet', got {cfg.family!r}")
        return cls(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_timesteps(t, x)
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)

