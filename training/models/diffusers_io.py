"""diffusers folders in and out: a `UNet2DModel` + scheduler config <-> our checkpoint and diffusion config.

In: the UNet's config.json becomes a `diffusers-unet2d` model config, its safetensors weights the state dict,
and the scheduler config our `DiffusionConfig` (beta schedule, prediction type, variance type). Out: a student
whose network has an exact `UNet2DModel` form is written as a folder diffusers' `DDPMPipeline` loads.
Anything without an exact equivalent is refused in one line, never approximated.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import CheckpointError, build_from_state_dict, file_sha256
from .diffusers_unet import BOOKKEEPING_PREFIX, require_diffusers

WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER = "scheduler_config.json"
# diffusers beta_schedule -> our noise_schedule (the cosine one is Improved DDPM's, capped at 0.999 as ours).
_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
# variance_type -> (learn_sigma, sigma_small); the *_log variants are the same variance computed via its log.
_VARIANCES = {"fixed_small": (False, True), "fixed_small_log": (False, True), "fixed_large": (False, False),
              "fixed_large_log": (False, False), "learned_range": (True, False)}


@dataclass(frozen=True)
class DiffusersTeacher:
    """What a diffusers folder holds, in our terms."""

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    diffusion: dict[str, Any]
    unet_dir: Path
    scheduler_file: Path


def is_diffusers_path(path: str | os.PathLike[str]) -> bool:
    """A pipeline folder (unet/ + scheduler/), a UNet folder (config.json + weights) or its weights file."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors" and (path.parent / "config.json").is_file()
    return (path / "unet" / "config.json").is_file() or (path / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _locate(path: Path) -> tuple[Path, Path]:
    """(UNet folder, scheduler config file) of a diffusers pipeline folder, UNet folder or weights file."""
    unet_dir = path.parent if path.is_file() else path / "unet" if (path / "unet").is_dir() else path
    candidates = [unet_dir / SCHEDULER, unet_dir.parent / "scheduler" / SCHEDULER, unet_dir.parent / SCHEDULER]
    scheduler = next((c for c in candidates if c.is_file()), None)
    if scheduler is None:
        raise CheckpointError(f"{path}: no scheduler config (looked for {', '.join(str(c) for c in candidates)}); "
                              "the teacher's noise schedule must come from its own scheduler")
    return unet_dir, scheduler


def scheduler_to_diffusion(config: Mapping[str, Any], *, where: str = "scheduler") -> dict[str, Any]:
    """Our DiffusionConfig fields for a DDPM-style scheduler config; unsupported settings are refused."""
    if config.get("trained_betas") is not None:
        raise CheckpointError(f"{where}: trained_betas (an explicit beta table) is not supported")
    if config.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"{where}: rescale_betas_zero_snr changes the schedule; not supported")
    schedule = config.get("beta_schedule", "linear")
    if schedule not in _SCHEDULES:
        raise CheckpointError(f"{where}: beta_schedule {schedule!r} is not supported (use one of {sorted(_SCHEDULES)})")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample"):
        raise CheckpointError(f"{where}: prediction_type {prediction!r} is not supported (epsilon or sample)")
    variance = config.get("variance_type", "fixed_small")
    if variance not in _VARIANCES:
        raise CheckpointError(f"{where}: variance_type {variance!r} is not supported ({', '.join(_VARIANCES)})")
    learn_sigma, sigma_small = _VARIANCES[variance]
    out: dict[str, Any] = {"steps": int(config.get("num_train_timesteps", 1000)),
                           "noise_schedule": _SCHEDULES[schedule],
                           "learn_sigma": learn_sigma, "sigma_small": sigma_small,
                           "predict_xstart": prediction == "sample"}
    if schedule != "squaredcos_cap_v2":
        out.update(beta_start=float(config.get("beta_start", 0.0001)), beta_end=float(config.get("beta_end", 0.02)))
    return out


def diffusion_to_scheduler(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The DDPMScheduler arguments of our diffusion config (the inverse of `scheduler_to_diffusion`)."""
    steps = int(diffusion.get("steps", 1000))
    schedule = diffusion.get("noise_schedule", "cosine")
    out: dict[str, Any] = {"num_train_timesteps": steps,
                           "prediction_type": "sample" if diffusion.get("predict_xstart") else "epsilon",
                           "variance_type": "learned_range" if diffusion.get("learn_sigma") else
                           "fixed_small" if diffusion.get("sigma_small") else "fixed_large",
                           "clip_sample": True}
    if schedule == "cosine":
        return {**out, "beta_schedule": "squaredcos_cap_v2"}
    start, end = diffusion.get("beta_start"), diffusion.get("beta_end")
    if start is None:  # our T-scaled linear endpoints, stated explicitly
        start, end = 1000 / steps * 0.0001, 1000 / steps * 0.02
    return {**out, "beta_schedule": schedule, "beta_start": float(start), "beta_end": float(end)}


def read_diffusers_teacher(path: str | os.PathLike[str]) -> DiffusersTeacher:
    """Read a diffusers UNet2DModel + scheduler into our terms, checking it matches and loads strictly."""
    require_diffusers()  # the missing extra is the first thing to fix, before anything about the folder
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    unet_dir, scheduler_file = _locate(path)
    raw = _read_json(unet_dir / "config.json")
    if raw.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{unet_dir / 'config.json'}: a {raw['_class_name']}, "
                              "only UNet2DModel teachers are supported")
    unet_config = {"family": "diffusers-unet2d",
                   **{k: v for k, v in raw.items() if not k.startswith(BOOKKEEPING_PREFIX)}}
    diffusion = scheduler_to_diffusion(_read_json(scheduler_file), where=str(scheduler_file))
    # Timestep convention: the UNet was trained on integer steps of the scheduler's T-step process, which is
    # what our diffusion passes it; a UNet that records another T was trained on another process.
    unet_steps = raw.get("num_train_timesteps")
    if unet_steps is not None and int(unet_steps) != diffusion["steps"]:
        raise CheckpointError(f"{unet_dir / 'config.json'}: num_train_timesteps {unet_steps} but the scheduler has "
                              f"{diffusion['steps']}; the timestep conventions disagree")
    out_channels, in_channels = raw.get("out_channels", 3), raw.get("in_channels", 3)
    if diffusion["learn_sigma"] != (out_channels == 2 * in_channels):
        raise CheckpointError(f"{scheduler_file}: variance_type "
                              f"{'learned_range' if diffusion['learn_sigma'] else 'fixed'}"
                              f" but the UNet outputs {out_channels} channels for {in_channels} input channels")
    weights = path if path.is_file() else unet_dir / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{unet_dir}: no {WEIGHTS} (only safetensors weights are read; re-save the model "
                              "with save_pretrained(safe_serialization=True))")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    state = {f"unet.{k}": v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        build_from_state_dict(unet_config, state, what=f"{weights.name} (UNet2DModel)")
    except ValueError as err:
        raise CheckpointError(f"{unet_dir / 'config.json'}: {err}") from None
    return DiffusersTeacher(unet_config, state, diffusion, unet_dir, scheduler_file)


def teacher_provenance(teacher: DiffusersTeacher, path: str | os.PathLike[str]) -> dict[str, Any]:
    weights = teacher.unet_dir / WEIGHTS
    return {"source": "import-teacher", "format": "diffusers", "imported_from": str(Path(path).resolve()),
            "imported_sha256": file_sha256(weights) if weights.is_file() else None,
            "scheduler": str(teacher.scheduler_file)}


def _replace_dir(tmp: Path, target: Path) -> None:
    # A folder cannot be swapped atomically; the old one is moved aside first, so a failure leaves one intact.
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_pipeline(unet: Any, diffusion: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Save `unet` (a diffusers UNet2DModel) with its DDPMScheduler as a DDPMPipeline folder, atomically."""
    diffusers = require_diffusers()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scheduler = diffusers.DDPMScheduler(**diffusion_to_scheduler(diffusion))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
