"""Explicit random streams: every consumer gets its own torch.Generator derived from (seed, stream, rank)."""
from __future__ import annotations

import torch

# Distinct purposes draw from distinct streams so adding draws to one never shifts another.
STREAMS = {"select": 1, "noise": 2, "prepare": 3, "data": 4, "synthetic": 5, "mix": 6}


def make_generator(device: torch.device | str, seed: int, stream: str, rank: int = 0) -> torch.Generator:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; expected one of {sorted(STREAMS)}")
    mixed = (seed * 1_000_003 + STREAMS[stream] * 10_007 + rank) % (2**63 - 1)
    return torch.Generator(device=torch.device(device)).manual_seed(mixed)


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The process-global torch RNG states (dropout draws from them), to save with a resume checkpoint."""
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(device: torch.device, state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
