"""Architectures beyond the built-in presets: a user preset or an inline `{family: ..., **config}` mapping.

`ArchRef` is a preset *name* (a `str`, so run names, tags and comparisons keep working) that carries its own
config. `get_preset(ref)` returns that config instead of looking the name up, so an architecture defined in a
profile reaches every place a preset name reaches without a process-wide registry.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from .config import parse_model_config


class ArchRef(str):
    """A preset name plus the `{family: ..., **config}` it stands for (origin: 'inline' or 'user')."""

    config: dict[str, Any]
    origin: str

    def __new__(cls, name: str, config: Mapping[str, Any], origin: str) -> ArchRef:
        obj = super().__new__(cls, name)
        obj.config = json.loads(json.dumps(dict(config)))  # a private deep copy of plain JSON values
        obj.origin = origin
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return ArchRef, (str(self), self.config, self.origin)


def inline_name(config: Mapping[str, Any]) -> str:
    """A stable name for an inline architecture: its family and a short hash of the normalised config."""
    canonical = json.dumps(parse_model_config(config).to_dict(), sort_keys=True)
    return f"inline-{config.get('family')}-{hashlib.sha1(canonical.encode()).hexdigest()[:6]}"


def arch_config(config: Mapping[str, Any], *, field: str) -> dict[str, Any]:
    """The normalised `{family: ..., **config}` of a mapping; any problem is a one-line ValueError on `field`."""
    try:
        return parse_model_config(dict(config)).to_dict()
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None


def count_config_parameters(config: Mapping[str, Any]) -> int:
    """Parameter count of the network a config builds (on the meta device: no memory, no initialisation)."""
    from .factory import create_model

    with torch.device("meta"):
        model = create_model(config)
    return sum(p.numel() for p in model.parameters())


def image_shape(config: Mapping[str, Any]) -> tuple[int, int]:
    """(channels, image_size) a config's network works on."""
    cfg = parse_model_config(config)
    shape = getattr(cfg, "image_shape", None)
    if shape is not None:
        return shape
    values = cfg.to_dict()
    return int(values.get("in_channels", 3)), int(values.get("image_size") or values.get("input_size"))


def learns_sigma(config: Mapping[str, Any]) -> bool:
    """Whether the network outputs variance channels next to eps (the learned-range variance)."""
    cfg = parse_model_config(config)
    value = getattr(cfg, "learn_sigma", None)
    return bool(value if value is not None else cfg.to_dict().get("learn_sigma", False))
