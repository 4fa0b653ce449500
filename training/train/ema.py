"""Exponential moving average of a model's parameters (guided-diffusion rate, or LDM's warm-up form)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds a frozen copy of the model whose parameters track rate*ema + (1-rate)*param after each step.

    With `warmup` the rate is min(rate, (1+n)/(10+n)) for the n-th update (LitEma), so early averages are not
    dominated by the random initialisation. Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, rate: float = 0.9999, *, warmup: bool = False) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"ema rate must lie in [0, 1), got {rate}")
        self.rate = rate
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_rate(self) -> float:
        if self.warmup:
            return min(self.rate, (1 + self.num_updates) / (10 + self.num_updates))
        return self.rate

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        rate = self.current_rate()
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA model and trained model have different parameter lists")
        torch._foreach_lerp_(ema_params, params, 1.0 - rate)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=False):
            ema_b.copy_(b)
        self.num_updates += 1
