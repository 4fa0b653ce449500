"""DKDM distillation: the objective, teacher data sources (iterative / shuffled / dynamic, random discard),
pool preparation, the paper's baselines and the run entry point.

Attributes load lazily so `training.distill.config` (pydantic only) imports without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DistillConfig": "config", "PoolConfig": "config", "PoolPrep": "config",
    "dkdm_losses": "objective", "dkdm_loss_fn": "objective", "hybrid_loss_fn": "objective",
    "check_compatible": "compat", "IncompatibleError": "compat",
    "DiffusionTeacherStep": "teacher", "TeacherStep": "teacher",
    "Pool": "pool", "PoolError": "pool", "prepare_pool": "pool", "load_pool": "pool", "prepare_in_memory": "pool",
    "noise_pool": "pool", "read_pool_meta": "pool",
    "TeacherBatch": "sources", "DataBatch": "sources", "PoolSource": "sources", "DatasetSource": "sources",
    "synthesize_dataset": "baselines", "load_synthetic": "baselines", "mix_data_limited": "baselines",
    "DatasetError": "baselines",
    "build_run": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'training.distill' has no attribute {name!r}")
    return getattr(importlib.import_module(f"training.distill.{module}"), name)
