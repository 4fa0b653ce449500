"""Resume checkpoints: one safetensors file holding every tensor, scalars as JSON in its metadata, written atomically.

Layout of the tensor keys: `student.<k>`, `ema.<k>`, `optim.<param index>.<k>`, and per-process state stacked
over ranks as `rank.<k>` (leading dim = world size: the pool, pending batch, generator states).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

META_KEY = "dkdm"
FORMAT = "dkdm-train-state/1"


class CheckpointError(ValueError):
    """A resume checkpoint is missing, unreadable or does not fit the run."""


def atomic_save_tensors(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write `tensors` + JSON `meta` to `path` via a temp file in the same directory and os.replace.

    A crash mid-write leaves the previous file untouched (and at worst a stray `.tmp` file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage; cloning also decouples from tensors still being trained.
    payload = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(payload, tmp, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def weights_sha256(*modules: torch.nn.Module) -> str:
    """One sha256 over the exact bytes of every state-dict tensor of `modules` (in key order): equal digests on
    all ranks prove the DDP replicas ended identical, bit for bit."""
    digest = hashlib.sha256()
    for module in modules:
        for key, value in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {err}") from None
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no '{META_KEY}' metadata (not written by dkdm)")
    return json.loads(raw)


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    meta = read_meta(path)
    return load_file(str(path)), meta


def split_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix.` with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors plus JSON-ready param groups (hyperparameters and param indices)."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, extra in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(extra)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
