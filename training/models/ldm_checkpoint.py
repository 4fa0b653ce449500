"""The released CompVis LDM checkpoint layout (PyTorch-Lightning `model.ckpt`), read into our UNet and VQ autoencoder.

Layout of `torch.load(path, weights_only=True)["state_dict"]`:
  12 schedule buffers (no prefix) | `model.diffusion_model.*` the UNet | `model_ema.*` its EMA, named
  `model_ema.` + `diffusion_model.<key>` with every dot removed, plus `model_ema.decay` / `model_ema.num_updates` |
  `first_stage_model.*` the VQ autoencoder.
A DKDM student checkpoint has the same layout without `first_stage_model.*`. A standalone first-stage checkpoint holds
the autoencoder keys without prefix, plus its training loss (`loss.*`), which is ignored.
Foreign files are only read with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.diffusion.ldm import SCHEDULE_BUFFERS, LatentDiffusion
from training.models.ldm_unet import LDMUNet, LDMUNetConfig
from training.models.safe_load import UnsafeFileError, load_weights_only
from training.models.vq import VQConfig, VQModel

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
EMA_SCALARS = ("model_ema.decay", "model_ema.num_updates")
FIRST_STAGE_PREFIX = "first_stage_model."
LOSS_PREFIX = "loss."
_SHOWN = 4


class LDMCheckpointError(ValueError):
    """A foreign LDM checkpoint that does not fit the model it is loaded into; the message groups every problem."""


def ema_key(unet_key: str) -> str:
    """`input_blocks.0.0.weight` -> `model_ema.diffusion_modelinput_blocks00weight` (LitEma drops the dots)."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


def read_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint (under "state_dict") or of a plain state-dict file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise LDMCheckpointError(f"checkpoint not found: {path}")
    try:
        obj = load_weights_only(path)
    except UnsafeFileError as err:
        raise LDMCheckpointError(str(err)) from None
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise LDMCheckpointError(f"{path}: holds no state dict (expected a mapping, or one under 'state_dict')")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LDMCheckpointError(f"{path}: state dict has non-tensor entries {_names(bad)}")
    return dict(state)


@dataclass
class LDMCheckpoint:
    unet: LDMUNet
    first_stage: VQModel | None
    diffusion: LatentDiffusion
    ema_used: bool


def load_ldm_checkpoint(path: str | Path, *, unet_config: LDMUNetConfig | Mapping[str, Any],
                        first_stage_config: VQConfig | Mapping[str, Any] | None = None, ema: bool = True,
                        diffusion: LatentDiffusion | None = None) -> LDMCheckpoint:
    """Build the UNet (EMA weights by default) and, if `first_stage_config` is given, the autoencoder from a released
    LDM (or DKDM student) checkpoint; its schedule buffers must equal `diffusion`'s (default: the LDM schedule)."""
    state = read_foreign_state_dict(path)
    diffusion = diffusion if diffusion is not None else LatentDiffusion()
    unet = LDMUNet.from_config(unet_config).eval()
    first_stage = VQModel.from_config(first_stage_config).eval() if first_stage_config is not None else None
    unet_state, vq_state = split_ldm_state_dict(state, unet, first_stage, diffusion, ema=ema, source=str(path))
    unet.load_state_dict(unet_state, strict=True)
    if first_stage is not None:
        first_stage.load_state_dict(vq_state, strict=True)
    return LDMCheckpoint(unet=unet, first_stage=first_stage, diffusion=diffusion, ema_used=ema)


def split_ldm_state_dict(state: Mapping[str, torch.Tensor], unet: nn.Module, first_stage: nn.Module | None,
                         diffusion: LatentDiffusion, *, ema: bool = True, source: str = "checkpoint"
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Check the whole layout against the modules and return (UNet state, first-stage state); raises one
    `LDMCheckpointError` listing every group of problems."""
    problems: list[str] = []
    unet_expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    raw = {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    problems += _compare("UNet (model.diffusion_model.*)", raw, unet_expected)

    ema_entries = {k: v for k, v in state.items() if k.startswith(EMA_PREFIX) and k not in EMA_SCALARS}
    ema_expected = {ema_key(k): s for k, s in unet_expected.items()}
    if ema:
        if not ema_entries:
            problems.append("EMA (model_ema.*): none in the checkpoint; pass ema=False to load the raw UNet weights")
        else:
            problems += _compare("EMA (model_ema.*)", ema_entries, ema_expected)
    elif ema_entries:
        problems += _compare("EMA (model_ema.*)", ema_entries, ema_expected, missing_ok=True)

    vq_state: dict[str, torch.Tensor] = {}
    fs = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    if first_stage is not None:
        if not fs:
            problems.append("first stage (first_stage_model.*): none in the checkpoint; load the autoencoder with "
                            "load_first_stage_checkpoint")
        else:
            problems += _compare("first stage (first_stage_model.*)", fs,
                                 {k: tuple(v.shape) for k, v in first_stage.state_dict().items()})
            vq_state = fs

    problems += _check_schedule(state, diffusion)

    known = (UNET_PREFIX, EMA_PREFIX, FIRST_STAGE_PREFIX)
    other = [k for k in state if not k.startswith(known) and k not in SCHEDULE_BUFFERS]
    if other:
        problems.append(f"unexpected keys outside the LDM layout: {_names(other)}")
    if problems:
        raise LDMCheckpointError(f"{source} does not fit the LDM layout: " + "; ".join(problems))

    if ema:
        unet_state = {k: state[ema_key(k)] for k in unet_expected}
    else:
        unet_state = {k: raw[k] for k in unet_expected}
    return unet_state, vq_state


def load_first_stage_checkpoint(path: str | Path, config: VQConfig | Mapping[str, Any]) -> VQModel:
    """The VQ autoencoder from a standalone first-stage checkpoint (its `loss.*` training objective is ignored) or
    from the `first_stage_model.*` part of a full LDM checkpoint."""
    state = read_foreign_state_dict(path)
    if any(k.startswith(FIRST_STAGE_PREFIX) for k in state):
        state = {k[len(FIRST_STAGE_PREFIX):]: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(LOSS_PREFIX)}
    model = VQModel.from_config(config).eval()
    problems = _compare("first stage", state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    if problems:
        raise LDMCheckpointError(f"{path} does not fit the VQ autoencoder: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def ldm_checkpoint_state_dict(unet: nn.Module, diffusion: LatentDiffusion, *, ema_unet: nn.Module | None = None,
                              first_stage: nn.Module | None = None, ema_decay: float = 0.9999,
                              ema_num_updates: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Our modules in the released key layout and order (buffers, UNet, EMA, first stage), e.g. to hand a model to
    tools that read CompVis checkpoints. `ema_unet` defaults to `unet` itself."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in diffusion.state_dict().items():
        out[name] = value.detach().cpu().clone()
    for name, value in unet.state_dict().items():
        out[UNET_PREFIX + name] = value.detach().cpu().clone()
    out[EMA_SCALARS[0]] = torch.tensor(ema_decay, dtype=torch.float32)
    out[EMA_SCALARS[1]] = torch.tensor(ema_num_updates, dtype=torch.int32)
    ema_source = ema_unet if ema_unet is not None else unet
    for name, value in ema_source.state_dict().items():
        out[ema_key(name)] = value.detach().cpu().clone()
    if first_stage is not None:
        for name, value in first_stage.state_dict().items():
            out[FIRST_STAGE_PREFIX + name] = value.detach().cpu().clone()
    return out


def _compare(group: str, found: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], *,
             missing_ok: bool = False) -> list[str]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k} {tuple(found[k].shape)} vs {expected[k]}" for k in expected
                  if k in found and tuple(found[k].shape) != expected[k]]
    parts = []
    if missing and not missing_ok:
        parts.append(f"{len(missing)} missing {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected {_names(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches (checkpoint vs model) {_names(mismatched)}")
    return [f"{group}: " + ", ".join(parts)] if parts else []


def _check_schedule(state: Mapping[str, torch.Tensor], diffusion: LatentDiffusion) -> list[str]:
    ours = diffusion.state_dict()
    missing = [k for k in SCHEDULE_BUFFERS if k not in state]
    if missing:
        return [f"schedule buffers: {len(missing)} missing {_names(missing)}"]
    # The buffers are float64 numbers cast to float32 on both sides, so anything beyond rounding is a different
    # schedule (another beta range, T or schedule type), which the sampler would silently get wrong.
    differing = [k for k in SCHEDULE_BUFFERS
                 if state[k].shape != ours[k].shape
                 or not torch.allclose(state[k].float(), ours[k].cpu(), rtol=1e-6, atol=1e-7)]
    if differing:
        return [f"schedule buffers differ from ours (T {diffusion.num_timesteps}, linear_start "
                f"{diffusion.linear_start}, linear_end {diffusion.linear_end}): {_names(differing)}"]
    return []


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return f"[{shown}{f', ... (+{len(items) - _SHOWN} more)' if len(items) > _SHOWN else ''}]"
