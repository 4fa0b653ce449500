"""Atomic writes and the safetensors + JSON sidecar pair the evaluation artifacts are stored as."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temp file in the same folder, then rename over `path`: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_tensors_with_sidecar(path: Path, tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
    """`X.safetensors` then `X.json`; the sidecar is written last, so its presence marks a complete pair."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"artifact path must end in .safetensors: {path}")
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"sidecar": "json"})
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    sidecar_file = sidecar_path(path)
    sidecar_file.unlink(missing_ok=True)
    atomic_write(path, lambda handle: handle.write(blob))
    atomic_write(sidecar_file, lambda handle: handle.write(text.encode()))


def load_tensors_with_sidecar(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    sidecar_file = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not sidecar_file.is_file():
        raise FileNotFoundError(f"{what} {path} has no sidecar {sidecar_file.name} (incomplete write?)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what} {path} is not a readable safetensors file ({exc})") from None
    try:
        sidecar = json.loads(sidecar_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} sidecar {sidecar_file} is not valid JSON ({exc})") from None
    return tensors, sidecar
