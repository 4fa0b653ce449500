"""Mixed precision policy: bf16 autocast on CUDA; CPU stays float32 unless asked (bf16 there is slow and inexact)."""
from __future__ import annotations

import contextlib

import torch


def autocast_for(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
