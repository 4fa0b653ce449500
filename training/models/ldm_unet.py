"""The latent-diffusion UNet (CompVis LDM `openaimodel.UNetModel` as the unconditional LDM yamls use it).

It differs from the pixel-space ADM UNet by its defaults: no scale-shift norm, learned conv resampling instead of
resblock up/down, the *legacy* qkv head layout, eps-only output. The module tree mirrors the reference so that a
released `model.diffusion_model.*` state dict loads with strict key matching.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from .nn import TimestepBlock, TimestepSequential

FAMILY = "ldm-unet"


class LDMUNetConfig(BaseModel):
    """Constructor arguments with the reference vocabulary; defaults are the ones in force for the LDM yamls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    attention_resolutions: tuple[int, ...]
    num_res_blocks: int
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_head_channels: int = -1
    num_heads: int = -1
    num_heads_upsample: int = -1
    dropout: float = 0.0
    conv_resample: bool = True
    dims: int = 2
    num_classes: int | None = None
    use_checkpoint: bool = False
    use_fp16: bool = False
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    use_spatial_transformer: bool = False
    transformer_depth: int = 1
    context_dim: int | None = None
    n_embed: int | None = None
    legacy: bool = True

    @model_validator(mode="after")
    def _supported(self) -> LDMUNetConfig:
        # Options of the reference class that no unconditional LDM/DKDM model uses are refused rather than ignored.
        unsupported = {
            "dims": self.dims != 2,
            "num_classes": self.num_classes is not None,
            "use_fp16": self.use_fp16,
            "resblock_updown": self.resblock_updown,
            "use_spatial_transformer": self.use_spatial_transformer,
            "context_dim": self.context_dim is not None,
            "n_embed": self.n_embed is not None,
        }
        bad = [name for name, flag in unsupported.items() if flag]
        if bad:
            raise ValueError(f"unsupported option(s) {bad} (only the unconditional 2-D LDM UNet is built)")
        if self.num_head_channels == -1 and self.num_heads == -1:
            raise ValueError("set num_heads or num_head_channels")
        if not self.channel_mult or self.num_res_blocks < 1 or self.model_channels % 32:
            raise ValueError("need a non-empty channel_mult, num_res_blocks >= 1, model_channels % 32 == 0")
        return self


def _zeroed(module: nn.Module) -> nn.Module:
    # The reference starts residual branches and the output head at zero; this only matters when training a network
    # (a student) from scratch, loaded weights overwrite it.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _group_norm(channels: int) -> nn.GroupNorm:
    return _GroupNorm32(32, channels, eps=1e-5)


class _GroupNorm32(nn.GroupNorm):
    # Statistics in float32 even under half precision, as the reference does.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, cosine half first (the LDM convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(TimestepBlock):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 use_scale_shift_norm: bool, use_checkpoint: bool) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            _group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _group_norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v: (B*heads, ch, T); scaling q and k each by ch^-1/4 keeps float16 products in range."""
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, residual, with 1-D conv projections."""

    def __init__(self, channels: int, num_heads: int, new_order: bool, use_checkpoint: bool) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"ldm-unet: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.new_order = new_order
        self.use_checkpoint = use_checkpoint
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        if self.new_order:
            # [q all heads][k all heads][v all heads]
            q, k, v = (part.reshape(b * self.num_heads, ch, length) for part in qkv.chunk(3, dim=1))
        else:
            # Legacy layout, which the released LDM weights use: head-major [q0 k0 v0][q1 k1 v1]...
            q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        h = _attend(q, k, v).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class LDMUNet(nn.Module):
    """Unconditional LDM UNet; `model(x, t)` returns eps of the same shape as `x` (for out_channels == in_channels)."""

    def __init__(self, config: LDMUNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def resblock(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, config.dropout, config.use_scale_shift_norm, config.use_checkpoint)

        def attention(ch: int, upsample: bool) -> AttentionBlock:
            if config.num_head_channels != -1:
                heads = ch // config.num_head_channels
            else:
                heads = config.num_heads_upsample if upsample and config.num_heads_upsample != -1 else config.num_heads
            return AttentionBlock(ch, heads, config.use_new_attention_order, config.use_checkpoint)

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(attention(ch, upsample=False))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch, config.conv_resample)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(resblock(ch, ch), attention(ch, upsample=False), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(attention(ch, upsample=True))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch, config.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(_group_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, config.out_channels, 3, padding=1)))

    @classmethod
    def from_config(cls, cfg: LDMUNetConfig | Mapping[str, Any]) -> LDMUNet:
        """Build from a config object or a mapping of the reference keys (an optional `family` key is checked)."""
        return cls(coerce_ldm_unet_config(cfg))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"ldm-unet: t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def coerce_ldm_unet_config(cfg: LDMUNetConfig | Mapping[str, Any]) -> LDMUNetConfig:
    if isinstance(cfg, LDMUNetConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"ldm-unet: config must be a mapping or LDMUNetConfig, got {type(cfg).__name__}")
    values = dict(cfg)
    family = values.pop("family", FAMILY)
    if family != FAMILY:
        raise ValueError(f"ldm-unet: config family is {family!r}, expected {FAMILY!r}")
    try:
        return LDMUNetConfig(**values)
    except ValidationError as err:
        raise ValueError(f"ldm-unet config: {summarize_validation_error(err)}") from None


def summarize_validation_error(err: ValidationError) -> str:
    """One line naming every offending key, instead of pydantic's multi-line report."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if not where:
            parts.append(str(e["msg"]).removeprefix("Value error, "))
        elif e["type"] == "missing":
            parts.append(f"missing key {where!r}")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        else:
            parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)

