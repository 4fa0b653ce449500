"""Our checkpoint format: `NAME.safetensors` (tensors `model.*`, optionally `ema.*`) + `NAME.json` sidecar.

The sidecar holds the architecture config (with `family`), the diffusion config as a plain dict and provenance
(source, creation time, git commit, parameter count, sha256 of the tensor file), so `load_checkpoint` rebuilds the
model with no other input. Each file is written to a temporary file in the same directory and moved into place
with `os.replace`; the tensor file goes first and the sidecar's checksum ties the pair together, so an
interrupted save never yields a pair that loads.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig, parse_model_config
from .factory import create_model
from .keydiff import describe_mismatch

FORMAT = "dkdm-checkpoint"
FORMAT_VERSION = 1
_PREFIXES = ("model.", "ema.")


class CheckpointError(Exception):
    """A checkpoint cannot be read, is refused, or does not match the model it should build."""


@dataclass(frozen=True)
class CheckpointMeta:
    weights_path: Path
    sidecar_path: Path
    model_config: ModelConfig
    diffusion_config: dict[str, Any]
    provenance: dict[str, Any]
    has_ema: bool
    loaded: str  # "ema" or "model": which weights the returned network holds

    def to_dict(self) -> dict[str, Any]:
        return {"weights_path": str(self.weights_path), "sidecar_path": str(self.sidecar_path),
                "model_config": self.model_config.to_dict(), "diffusion_config": self.diffusion_config,
                "provenance": self.provenance, "has_ema": self.has_ema, "loaded": self.loaded}


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.json) for `NAME`, `NAME.safetensors` or `NAME.json`."""
    path = Path(path)
    stem = path.name
    for suffix in (".safetensors", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return path.with_name(stem + ".safetensors"), path.with_name(stem + ".json")


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str = "state dict") -> nn.Module:
    """Strictly load `state_dict` into `model`; a key or shape mismatch raises CheckpointError with a grouped diff."""
    diff = describe_mismatch(_shapes(model.state_dict()), _shapes(state_dict), what=what)
    if diff:
        raise CheckpointError(diff)
    model.load_state_dict(state_dict, strict=True)
    return model


def build_from_state_dict(config: ModelConfig | Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
                          device: str | torch.device = "cpu", what: str = "state dict") -> nn.Module:
    """Build the model of `config` holding `state_dict` (checked on the meta device first, so a mismatch costs
    no memory and a match skips the random initialisation)."""
    cfg = parse_model_config(config)
    with torch.device("meta"):
        model = create_model(cfg)
    diff = describe_mismatch(_shapes(model.state_dict()), _shapes(state_dict), what=what)
    if diff:
        raise CheckpointError(diff)
    persistent = set(model.state_dict())
    if all(name in persistent for name, _ in model.named_buffers()):
        model = model.to_empty(device=device)
    else:  # some buffer is not saved, so it must come from a real initialisation
        with torch.device(device):
            model = create_model(cfg)
    model.load_state_dict(state_dict, strict=True)
    return model


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain_dict(value: Any, name: str) -> dict[str, Any]:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {type(value).__name__}")
    value = dict(value)
    try:
        json.dumps(value)
    except TypeError as err:
        raise ValueError(f"{name}: not JSON-serialisable ({err})") from None
    return value


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, model_config: ModelConfig | Mapping[str, Any],
                    diffusion_config: Mapping[str, Any], provenance: Mapping[str, Any] | None = None,
                    ema_model: nn.Module | None = None) -> Path:
    """Write NAME.safetensors + NAME.json; returns the .safetensors path. Nothing is written on a bad input."""
    weights_path, sidecar_path = checkpoint_paths(path)
    cfg = parse_model_config(model_config)
    diffusion = _plain_dict(diffusion_config, "diffusion_config")
    user_provenance = _plain_dict(provenance or {}, "provenance")
    with torch.device("meta"):
        reference = _shapes(create_model(cfg).state_dict())
    tensors: dict[str, torch.Tensor] = {}
    for prefix, net in (("model.", model), ("ema.", ema_model)):
        if net is None:
            continue
        state = net.state_dict()
        diff = describe_mismatch(reference, _shapes(state), what=f"{prefix.rstrip('.')} weights")
        if diff:
            raise CheckpointError(f"cannot save {weights_path.name}: model_config does not describe the network\n"
                                  f"{diff}")
        tensors.update({prefix + k: v.detach().to("cpu").contiguous() for k, v in state.items()})
    if not weights_path.parent.is_dir():
        raise CheckpointError(f"cannot save {weights_path}: directory {weights_path.parent} does not exist")

    _atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    sidecar = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "weights": weights_path.name,
        "model_config": cfg.to_dict(),
        "diffusion_config": diffusion,
        "has_ema": ema_model is not None,
        "provenance": {
            "source": "dkdm",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            **user_provenance,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "sha256": file_sha256(weights_path),
        },
    }
    text = json.dumps(sidecar, indent=1) + "\n"
    _atomic_write(sidecar_path, lambda tmp: tmp.write_text(text))
    return weights_path


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed sidecar of a checkpoint (no tensors read)."""
    weights_path, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        raise CheckpointError(f"{sidecar_path}: sidecar not found (a dkdm checkpoint is NAME.safetensors + NAME.json)")
    try:
        meta = json.loads(sidecar_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{sidecar_path}: unreadable sidecar ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar_path}: not a dkdm checkpoint sidecar (format {FORMAT!r} expected)")
    for key in ("model_config", "diffusion_config", "provenance"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{sidecar_path}: sidecar has no {key} mapping")
    return meta


def read_checkpoint_tensors(path: str | os.PathLike[str], *, verify: bool = True
                            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(model state dict, EMA state dict or None, sidecar) on CPU, e.g. to resume training."""
    weights_path, _ = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: tensor file not found (its sidecar exists)")
    expected = meta["provenance"].get("sha256")
    if verify and expected and file_sha256(weights_path) != expected:
        raise CheckpointError(f"{weights_path}: sha256 does not match its sidecar (file changed or truncated)")
    try:
        flat = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in _PREFIXES}
    for key, value in flat.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"{weights_path}: unexpected tensor {key!r} (keys start with 'model.' or 'ema.')")
        parts[prefix][key[len(prefix):]] = value
    if not parts["model."]:
        raise CheckpointError(f"{weights_path}: holds no 'model.*' tensors")
    return parts["model."], parts["ema."] or None, meta


def load_checkpoint(path: str | os.PathLike[str], *, ema: bool = True, device: str | torch.device = "cpu",
                    verify: bool = True) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the network of a checkpoint (EMA weights when present and `ema`), in eval mode, on `device`."""
    weights_path, sidecar_path = checkpoint_paths(path)
    model_state, ema_state, meta = read_checkpoint_tensors(path, verify=verify)
    try:
        cfg = parse_model_config(meta["model_config"])
    except ValueError as err:
        raise CheckpointError(f"{sidecar_path}: bad model_config: {err}") from None
    use_ema = ema and ema_state is not None
    state = ema_state if use_ema else model_state
    try:
        model = build_from_state_dict(cfg, state, device=device, what=f"{weights_path.name} ({cfg.family})")
    except CheckpointError as err:
        raise CheckpointError(f"{sidecar_path.name}: its model_config does not match the tensors\n{err}") from None
    model.eval()
    return model, CheckpointMeta(weights_path=weights_path, sidecar_path=sidecar_path, model_config=cfg,
                                 diffusion_config=meta["diffusion_config"], provenance=meta["provenance"],
                                 has_ema=ema_state is not None, loaded="ema" if use_ema else "model")
