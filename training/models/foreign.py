"""Foreign `.pt` state dicts (ADM / DDPM-IP teachers): safe loading and conversion into our format.

Only `torch.load(..., weights_only=True)` is ever used: a pickle that would run code is refused, never executed.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, build_from_state_dict, file_sha256, save_checkpoint
from .presets import get_preset_info
from .safe_load import UnsafeFileError, load_weights_only

# Keys under which training scripts commonly wrap the weights; EMA first when EMA weights are preferred.
_EMA_KEYS = ("ema", "ema_model", "model_ema", "ema_state_dict")
_MODEL_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "module")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, path: Path, prefer_ema: bool) -> Mapping[str, torch.Tensor]:
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in (_EMA_KEYS + _MODEL_KEYS) if prefer_ema else (_MODEL_KEYS + _EMA_KEYS):
            inner = obj.get(key)
            if _is_state_dict(inner):
                return inner
            if isinstance(inner, Mapping) and _is_state_dict(inner.get("state_dict")):
                return inner["state_dict"]
        top = ", ".join(map(str, list(obj)[:8])) + (" ..." if len(obj) > 8 else "")
        raise CheckpointError(f"{path}: no state dict found (top-level keys: {top}; expected a mapping of tensors "
                              f"or one wrapped under {', '.join(repr(k) for k in _MODEL_KEYS[:2] + _EMA_KEYS[:1])})")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def _read_raw(path: Path, prefer_ema: bool) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = load_weights_only(path)
    except UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    return _unwrap(obj, path, prefer_ema)


def _as_float32(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        out[name] = value.float() if value.is_floating_point() else value
    return out


def load_foreign_state_dict(path: str | os.PathLike[str], *, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """A foreign checkpoint's weights as a float32 state dict with any DataParallel `module.` prefix removed.

    Accepts a plain state dict or one wrapped in a dict (`state_dict`, `model`, `ema`, ...; `prefer_ema` picks
    EMA weights when both are present).
    """
    return _as_float32(_read_raw(Path(path), prefer_ema))


def import_teacher(pt_path: str | os.PathLike[str], preset: str, out_path: str | os.PathLike[str], *,
                   diffusion_config: Mapping[str, Any], prefer_ema: bool = True) -> Path:
    """Convert a foreign `.pt` of preset `preset`'s architecture into NAME.safetensors + NAME.json.

    Returns the .safetensors path. A key/shape mismatch raises CheckpointError with a grouped diff, before
    anything is written.
    """
    pt_path = Path(pt_path)
    info = get_preset_info(preset)
    raw = _read_raw(pt_path, prefer_ema)
    model = build_from_state_dict(info.model_config(), _as_float32(raw), what=f"{pt_path.name} (preset {info.name})")
    provenance = {"source": "import-teacher", "preset": info.name, "paper_label": info.paper_label,
                  "imported_from": str(pt_path.resolve()), "imported_sha256": file_sha256(pt_path),
                  "imported_dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in raw.values()})}
    return save_checkpoint(out_path, model, model_config=info.model_config(), diffusion_config=diffusion_config,
                           provenance=provenance)
