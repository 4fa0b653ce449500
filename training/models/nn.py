"""Layers shared by the pixel-space networks (ADM UNet, DiT)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer) timesteps, cosine half first, computed in float32.

    The reference feeds raw timesteps of the original 1000-step process; the frequency table is float32,
    so the product must be formed in float32 too or t=999 drifts by ~1e-4 in the argument.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the activation dtype (bf16/fp16 statistics are too coarse)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    if channels % 32:
        raise ValueError(f"GroupNorm uses 32 groups, so channel counts must be multiples of 32 (got {channels})")
    return GroupNorm32(32, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    # Output projections of residual branches start at zero so a fresh network starts as (near) identity blocks.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (B, heads, N, d) tensors.

    Fused SDPA differs from the reference's explicit (q d^-1/4)(k d^-1/4) product with a float32 softmax by a few
    1e-7 on the golden models (well inside the 1e-5 network tolerance), and its kernels accumulate the softmax in
    float32 under bf16 autocast.
    """
    return F.scaled_dot_product_attention(q, k, v)


def batch_timesteps(t: torch.Tensor | int | float, x: torch.Tensor) -> torch.Tensor:
    """Timesteps as a (B,) tensor on x's device; a scalar is broadcast over the batch."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t: expected shape ({x.shape[0]},) for a batch of {x.shape[0]}, got {tuple(t.shape)}")
    return t


class TimestepBlock(nn.Module):
    """A layer that takes the timestep embedding besides x: the residual blocks of the ADM and LDM UNets."""


class TimestepSequential(nn.Sequential):
    """Sequential container that hands the timestep embedding to its `TimestepBlock`s only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x
