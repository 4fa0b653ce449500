"""Unconditional DiT (DKDM's `dit.DiT` with `use_class=False`) with the reference state-dict layout."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import DiTConfig, parse_model_config
from .nn import attention, batch_timesteps, timestep_embedding

FREQUENCY_EMBEDDING_SIZE = 256


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """(grid_size**2, dim) table: first half encodes the column index, second half the row; each half sin first.

    Built in float64 like the reference and rounded to float32 once, so the frozen table matches bit for bit.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64),
                             indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        args = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens in row-major order, hidden)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Unconditional DiT: the conditioning vector is the timestep embedding alone (no `y_embedder`)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        # pos_embed is registered first so it leads the state dict, as in the reference.
        grid = config.input_size // config.patch_size
        # torch.tensor (unlike from_numpy) follows a `with torch.device(...)` context, e.g. meta or cuda.
        table = torch.tensor(sincos_pos_embed_2d(hidden, grid)[None], dtype=torch.float32)
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels)
        self._initialize()

    def _initialize(self) -> None:
        # DiT's recipe: xavier linears, small-normal timestep MLP, and zero adaLN/output so each block starts as
        # the identity.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for layer in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, config: DiTConfig | Mapping[str, Any]) -> DiT:
        cfg = parse_model_config(config if not isinstance(config, Mapping) else {"family": "dit", **config})
        if not isinstance(cfg, DiTConfig):
            raise ValueError(f"family: expected 'dit', got {cfg.family!r}")
        return cls(cfg)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.out_channels
        side = self.config.input_size // p
        x = x.reshape(x.shape[0], side, side, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, side * p, side * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_timesteps(t, x)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c)).to(x.dtype)
