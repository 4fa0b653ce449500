"""Typed model configurations in the reference vocabulary (guided-diffusion `create_model`, DKDM `DiT`).

A config can be given as a mapping `{"family": ..., **config}` (what `get_preset` returns and what a checkpoint
sidecar stores), as a reference architecture JSON `{"family": ..., "config": {...}, ...metadata}`, or as one of
the classes below. `parse_model_config` turns any of these into a validated object; every problem becomes a
one-line `ValueError` naming the offending key.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator, model_validator

FAMILIES = ("adm-unet", "dit", "diffusers-unet2d", "ldm-unet", "vq-f4")

# Metadata fields of a reference architecture JSON that sit next to "config" and are not constructor arguments.
_ARCH_JSON_METADATA = {
    "preset", "paper_label", "note", "source", "derived", "diffusion", "num_parameters",
    "num_trainable_parameters", "state_dict", "state_dict_dtype", "randomisation", "mode",
}

# guided-diffusion derives channel_mult from image_size when the yaml leaves it empty; 8 and 16 are our additions
# for the small CPU presets.
DEFAULT_CHANNEL_MULT = {8: (1, 2), 16: (1, 2, 2), 32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4),
                        256: (1, 1, 2, 2, 4, 4)}

# The reference's predefined DiT table (depth, hidden_size, patch_size, num_heads); a known name overrides the
# explicit sizes there, so we insist they agree instead of silently building something else.
DIT_TABLE = {
    f"DiT-{size}/{p}": (depth, hidden, p, heads)
    for size, (depth, hidden, heads) in {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12),
                                         "S": (12, 384, 6)}.items()
    for p in (2, 4, 8)
}


class ModelConfig(BaseModel):
    """Base of all model configs: `family` plus the constructor arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    family: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping `{"family": ..., **config}` that `parse_model_config` reads back."""
        return self.model_dump(mode="json", exclude_none=True)


class ADMUNetConfig(ModelConfig):
    family: Literal["adm-unet"] = "adm-unet"
    image_size: int
    in_channels: int = 3
    out_channels: int | None = None
    num_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...] = ()
    attention_resolutions: tuple[int, ...] = ()
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = True
    learn_sigma: bool = True
    class_cond: bool = False
    # Accepted because the reference configs carry them; they do not change the structure or the state dict.
    use_fp16: bool = False
    use_checkpoint: bool = False
    channel_mult_yaml: str | None = None

    @field_validator("channel_mult", mode="before")
    @classmethod
    def _parse_channel_mult(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(v) for v in value.split(",") if v.strip())
        return value

    @field_validator("attention_resolutions", mode="before")
    @classmethod
    def _parse_resolutions(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(v) for v in value.split(",") if v.strip())
        if isinstance(value, int):
            return (value,)
        return value

    @field_serializer("attention_resolutions")
    def _resolutions_as_yaml(self, value: tuple[int, ...]) -> str:
        # Written back in the reference's own form, a comma-separated string of resolutions.
        return ",".join(str(v) for v in value)

    @model_validator(mode="after")
    def _check(self) -> ADMUNetConfig:
        if self.class_cond:
            raise ValueError("class_cond: class-conditional ADM models are not supported "
                             "(the DKDM models are unconditional)")
        if not self.channel_mult:
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(f"channel_mult: no default for image_size {self.image_size}; give it explicitly")
            object.__setattr__(self, "channel_mult", DEFAULT_CHANNEL_MULT[self.image_size])
        if any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult: entries must be positive, got {list(self.channel_mult)}")
        for res in self.attention_resolutions:
            if res <= 0 or self.image_size % res:
                raise ValueError(f"attention_resolutions: {res} does not divide image_size {self.image_size}")
        expected_out = self.in_channels * (2 if self.learn_sigma else 1)
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", expected_out)
        elif self.out_channels != expected_out:
            raise ValueError(f"out_channels: {self.out_channels} but in_channels {self.in_channels} with "
                             f"learn_sigma={self.learn_sigma} needs {expected_out}")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("num_heads: set num_heads or num_head_channels")
        for name in ("num_channels", "num_res_blocks", "in_channels", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        return self

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample rates at which attention is used (the yaml lists resolutions)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)


class DiTConfig(ModelConfig):
    family: Literal["dit"] = "dit"
    input_size: int | None = None
    image_size: int | None = None
    patch_size: int = 2
    in_channels: int = 3
    out_channels: int | None = None
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    unconditional: bool = True
    # Reference arguments that only matter for class-conditional models; accepted and checked, not used.
    class_cond: bool = False
    use_class: bool = False
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    use_fp16: bool = False
    model_name: str = "custom"

    @model_validator(mode="after")
    def _check(self) -> DiTConfig:
        if self.class_cond or self.use_class or not self.unconditional:
            raise ValueError("class_cond: class-conditional DiT is not supported (the DKDM DiT is unconditional)")
        size = self.input_size if self.input_size is not None else self.image_size
        if size is None:
            raise ValueError("input_size: give input_size or image_size")
        if self.image_size is not None and self.image_size != size:
            raise ValueError(f"image_size: {self.image_size} disagrees with input_size {self.input_size}")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "image_size", size)
        if self.model_name in DIT_TABLE:
            table = dict(zip(("depth", "hidden_size", "patch_size", "num_heads"), DIT_TABLE[self.model_name],
                             strict=False))
            wrong = {k: v for k, v in table.items() if getattr(self, k) != v}
            if wrong:
                raise ValueError(f"model_name: {self.model_name!r} fixes {wrong} in the reference, which would ignore "
                                 "the sizes given; use model_name 'custom' for a custom DiT")
        if size % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} does not divide input_size {size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size: the 2-D sin-cos position table needs a multiple of 4, "
                             f"got {self.hidden_size}")
        expected_out = self.in_channels * (2 if self.learn_sigma else 1)
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", expected_out)
        elif self.out_channels != expected_out:
            raise ValueError(f"out_channels: {self.out_channels} but in_channels {self.in_channels} with "
                             f"learn_sigma={self.learn_sigma} needs {expected_out}")
        return self

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2


class DiffusersUNetConfig(ModelConfig):
    """A diffusers `UNet2DModel`: its config.json keys, checked against the installed diffusers (optional extra)."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())
    family: Literal["diffusers-unet2d"] = "diffusers-unet2d"
    sample_size: int
    in_channels: int = 3
    out_channels: int = 3

    @model_validator(mode="after")
    def _check(self) -> DiffusersUNetConfig:
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(f"out_channels: {self.out_channels} must be in_channels ({self.in_channels}, eps) or "
                             f"twice it (eps + learned-range variance)")
        from .diffusers_unet import check_unet2d_config

        for key, value in check_unet2d_config(self.to_dict()).items():
            if key not in type(self).model_fields:  # defaults made explicit: equal configs, equal networks
                self.__pydantic_extra__[key] = value
        return self

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.in_channels, self.sample_size

    @property
    def image_size(self) -> int:
        return self.sample_size

    def to_dict(self) -> dict[str, Any]:
        # None is meaningful in a diffusers config (e.g. attention_head_dim), so it is kept.
        return self.model_dump(mode="json")


class ExternalModelConfig(ModelConfig):
    """Latent-space families: validated by their own modules (training.models.ldm_unet / .vq), kept verbatim here."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())
    family: Literal["ldm-unet", "vq-f4"]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


_BY_FAMILY: dict[str, type[ModelConfig]] = {
    "adm-unet": ADMUNetConfig, "dit": DiTConfig, "diffusers-unet2d": DiffusersUNetConfig,
    "ldm-unet": ExternalModelConfig, "vq-f4": ExternalModelConfig,
}


def _one_line(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_model_config(config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """Validate a model config given as a ModelConfig, a flat mapping or a reference architecture JSON."""
    if isinstance(config, ModelConfig):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(f"model config: expected a mapping or ModelConfig, got {type(config).__name__}")
    values = dict(config)
    if isinstance(values.get("config"), Mapping):
        extra = set(values) - _ARCH_JSON_METADATA - {"family", "config"}
        if extra:
            raise ValueError(f"model config: unknown key(s) {sorted(extra)} next to 'config'")
        values = {"family": values.get("family"), **values["config"]}
    family = values.get("family")
    if family not in _BY_FAMILY:
        raise ValueError(f"family: {family!r} is not one of {list(FAMILIES)}")
    try:
        return _BY_FAMILY[family](**values)
    except ValidationError as err:
        raise ValueError(f"{family} config: {_one_line(err)}") from None
