"""The VQ-f4 first stage of the CompVis LDMs: taming-style encoder/decoder around a `VectorQuantizer2` codebook.

Module names follow the reference so that `first_stage_model.*` of a released LDM checkpoint (prefix stripped) or a
standalone vq-f4 checkpoint (minus its `loss.*` training objective) loads with strict key matching.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from training.models.ldm_unet import summarize_validation_error

FAMILY = "vq-f4"


class VQDDConfig(BaseModel):
    """Encoder/decoder settings (`ddconfig` in the yamls)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    double_z: bool = False
    z_channels: int
    resolution: int
    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    resamp_with_conv: bool = True

    @model_validator(mode="after")
    def _supported(self) -> VQDDConfig:
        if not self.resamp_with_conv:
            raise ValueError("resamp_with_conv false is not supported (every vq-f4 model resamples with a conv)")
        if self.ch % 32 or not self.ch_mult or self.num_res_blocks < 1:
            raise ValueError("need ch % 32 == 0, a non-empty ch_mult and num_res_blocks >= 1")
        return self


class VQConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int
    n_embed: int
    ddconfig: VQDDConfig
    beta: float = 0.25

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ddconfig.ch_mult) - 1)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of `encode` for a square image of `image_size` pixels."""
        side = image_size // self.downsample_factor
        return (self.embed_dim, side, side)


def _norm(channels: int) -> nn.GroupNorm:
    # The autoencoder uses eps 1e-6, unlike the UNet's 1e-5.
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, hh * ww)
        v = self.v(h).reshape(b, c, hh * ww)
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric zero padding (right and bottom only) before the unpadded strided conv, as the weights expect.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (AttnBlocks, possibly empty) and an optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQDDConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            cin, cout = cfg.ch * in_mult[i], cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, cfg.dropout))
                cin = cout
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cout))
            level = _Level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cout)
                res //= 2
            self.down.append(level)
        ch = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(ch, cfg.dropout)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQDDConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        ch = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _Mid(ch, cfg.dropout)
        up: list[_Level] = []
        for i in reversed(range(levels)):
            cout = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, cout, cfg.dropout))
                ch = cout
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cout))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(cout)
                res *= 2
            up.insert(0, level)
        # Indexed by resolution level (up.0 is full resolution and runs last), hence built in reverse.
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser (`VectorQuantizer2`, legacy loss form, no index remapping)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float) -> None:
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B,C,H,W) -> (straight-through quantised z, codebook loss, indices (B,H,W))."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"vq-f4: latent has {c} channels, the codebook has {self.embed_dim}")
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codes = self.embedding.weight
        dist = (z_flat.pow(2).sum(dim=1, keepdim=True) + codes.pow(2).sum(dim=1)
                - 2 * torch.einsum("nd,kd->nk", z_flat, codes))
        indices = dist.argmin(dim=1)
        z_q = self.embedding(indices).reshape(b, h, w, c)
        z_hwc = z.permute(0, 2, 3, 1)
        # Legacy weighting of the reference: weight 1 on the term that pulls the encoder output towards its code,
        # beta on the term that moves the code (the value is (1 + beta) * mse either way; only gradients differ).
        loss = F.mse_loss(z_q.detach(), z_hwc) + self.beta * F.mse_loss(z_q, z_hwc.detach())
        z_q = z_hwc + (z_q - z_hwc).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, indices.reshape(b, h, w)


class VQModel(nn.Module):
    """Encoder -> quant_conv -> (quantise) -> post_quant_conv -> decoder.

    `encode` returns the *unquantised* latent the LDM diffuses; `decode` quantises first unless told not to, as
    LDM's `decode_first_stage` does.
    """

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        dd = config.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim, config.beta)
        self.quant_conv = nn.Conv2d(dd.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd.z_channels, 1)

    @classmethod
    def from_config(cls, cfg: VQConfig | Mapping[str, Any]) -> VQModel:
        """Build from a config object or a mapping of the reference keys (an optional `family` key is checked)."""
        return cls(coerce_vq_config(cfg))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        if not force_not_quantize:
            z, _, _ = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and codebook loss (autoencoder training/evaluation)."""
        quant, loss, _ = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(quant)), loss


def coerce_vq_config(cfg: VQConfig | Mapping[str, Any]) -> VQConfig:
    if isinstance(cfg, VQConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"vq-f4: config must be a mapping or VQConfig, got {type(cfg).__name__}")
    values = dict(cfg)
    family = values.pop("family", FAMILY)
    if family != FAMILY:
        raise ValueError(f"vq-f4: config family is {family!r}, expected {FAMILY!r}")
    try:
        return VQConfig(**values)
    except ValidationError as err:
        raise ValueError(f"vq-f4 config: {summarize_validation_error(err)}") from None
