"""The training loop (AdamW, EMA, autocast, NaN guard, eval hook, exact resume), tracking protocol and torchrun helpers.

Attributes load lazily so `training.train.config` (pydantic only) imports without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "Trainer": "trainer", "TrainResult": "trainer", "load_best_weights": "trainer",
    "EMA": "ema",
    "Tracker": "tracker", "NullTracker": "tracker", "ListTracker": "tracker",
    "DistContext": "distributed", "init_distributed": "distributed", "shutdown_distributed": "distributed",
    "CheckpointError": "state", "atomic_save_tensors": "state", "load_tensors": "state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'training.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"training.train.{module}"), name)
