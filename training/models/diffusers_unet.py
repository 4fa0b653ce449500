"""A diffusers `UNet2DModel` as a dkdm network (family `diffusers-unet2d`): `model(x, t)` returns eps (+ v).

diffusers is an optional extra: everything here imports it lazily and, when it is missing, says in one line
what to install. The wrapper only adapts the call: our diffusion already hands the network integer timesteps
of the original T-step process, which is exactly what a `UNet2DModel` trained with `DDPMScheduler` expects.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .nn import batch_timesteps

INSTALL_HINT = "pip install 'dkdm[diffusers]' (or: pip install diffusers)"
# Keys diffusers writes into config.json for its own bookkeeping; they are not constructor arguments.
BOOKKEEPING_PREFIX = "_"


def require_diffusers() -> Any:
    """The diffusers module, or a one-line ValueError saying what to install."""
    try:
        import diffusers
    except ImportError:
        raise ValueError(f"diffusers is not installed; the diffusers-unet2d family needs it: {INSTALL_HINT}") from None
    return diffusers


def _unet_class() -> Any:
    return require_diffusers().UNet2DModel


def unet_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """UNet2DModel constructor arguments of a `{family: diffusers-unet2d, ...}` mapping."""
    return {k: v for k, v in config.items() if k != "family" and not k.startswith(BOOKKEEPING_PREFIX)}


def check_unet2d_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every UNet2DModel argument of `config` (defaults filled in, JSON values), after refusing unknown keys and
    class conditioning in one line each: two configs build the same network exactly when these agree."""
    cls = _unet_class()
    params = inspect.signature(cls.__init__).parameters
    allowed = set(params) - {"self"}
    kwargs = unet_kwargs(config)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a UNet2DModel argument (diffusers {require_diffusers().__version__})")
    if kwargs.get("class_embed_type") or kwargs.get("num_class_embeds"):
        raise ValueError("class_embed_type: class-conditional UNet2DModel is not supported (DKDM is unconditional)")
    if kwargs.get("time_embedding_type", "positional") != "positional":
        raise ValueError("time_embedding_type: only 'positional' (integer DDPM timesteps) is supported")
    try:
        with torch.device("meta"):
            cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"UNet2DModel refuses this config: {first_line}") from None
    full = {name: params[name].default for name in allowed if params[name].default is not inspect.Parameter.empty}
    return json.loads(json.dumps({**full, **kwargs}, default=list))


class DiffusersUNet(nn.Module):
    """`UNet2DModel` behind our call convention; the state dict keys are the diffusers keys under `unet.`."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        from .config import parse_model_config

        # The parsed config, as ADM UNet and DiT carry theirs (samplers read in_channels / image_size from it).
        self.config = parse_model_config({**config, "family": "diffusers-unet2d"})
        self.unet = _unet_class()(**unet_kwargs(self.config.to_dict()))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DiffusersUNet:
        return cls(config)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, batch_timesteps(t, x), return_dict=False)[0]
