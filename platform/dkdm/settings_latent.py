"""Settings of latent-space profiles (`space: latent`): the LDM teacher's process and its first stage.

They live under `teacher.latent` because a released LDM checkpoint holds exactly these parts (schedule buffers, the
UNet and `first_stage_model.*`) and because dvc.yaml then tracks them through the `teacher` params every profile has.
`check_latent` is called by `Settings` validation; a pixel profile leaves `teacher.latent` unset.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from dkdm.settings import Settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class FirstStageTrain(_Section):
    """Autoencoder training (CPU profiles): L1 reconstruction + the VQ codebook loss, AdamW."""

    iterations: int = Field(600, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    seed: int = Field(0, ge=0)
    log_every: int = Field(50, gt=0)
    codebook_restart_every: int | None = Field(
        100, gt=0, description="re-seed codes no batch used from current encoder outputs every N steps (None: never)")


class FirstStageSettings(_Section):
    preset: str = Field("vq-f4-digits", description="a vq-f4 family preset")
    source: Literal["train", "import"] = Field("train", description="train on the real data, or import weights")
    checkpoint: Path | None = Field(
        None,
        description="source import: a standalone first-stage .ckpt; None = first_stage_model.* of teacher.checkpoint")
    train: FirstStageTrain = FirstStageTrain()


class LatentSettings(_Section):
    """LDM's process: sqrt-linear betas from linear_start to linear_end over diffusion.steps, eps prediction, fixed
    variance; latents are the first stage's encoder output times scale_factor."""

    linear_start: float = Field(0.0015, gt=0, lt=1)
    linear_end: float = Field(0.0195, gt=0, lt=1)
    scale_factor: float | Literal["auto"] = Field(
        1.0, description="'auto': 1/std of the encoded training set (LDM's scale_by_std), fixed when the "
                         "autoencoder stage runs; the released vq-f4 LDMs use 1.0")
    first_stage: FirstStageSettings = FirstStageSettings()

    @model_validator(mode="after")
    def _schedule(self) -> LatentSettings:
        if self.linear_start >= self.linear_end:
            raise ValueError(f"linear_start ({self.linear_start}) must be below linear_end ({self.linear_end})")
        if isinstance(self.scale_factor, float) and self.scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive or 'auto', got {self.scale_factor}")
        return self


def _steps(field: str, value: str, num_timesteps: int) -> None:
    """Latent sampling steps: '' (all T) or a DDIM step count 1..T."""
    if value == "":
        return
    if not value.isdigit() or not 1 <= int(value) <= num_timesteps:
        raise ValueError(f"{field}: latent profiles take a DDIM step count 1..{num_timesteps} or '' (got {value!r})")


def check_latent(settings: Settings) -> None:
    """Cross-section checks of a latent profile (raises ValueError naming the field; pydantic adds no prefix)."""
    from dkdm.compat import check_preset, preset_shape
    from training.models import get_preset, get_preset_info

    latent = settings.teacher.latent
    if settings.space == "pixel":
        if latent is not None:
            raise ValueError("teacher.latent: set only in latent profiles (this one has space 'pixel')")
        return
    if latent is None:
        raise ValueError("teacher.latent: space 'latent' needs the teacher's latent process and first stage")
    fs = latent.first_stage
    check_preset("teacher.latent.first_stage.preset", fs.preset)
    for field, name, family in (("teacher.latent.first_stage.preset", fs.preset, "vq-f4"),
                                ("teacher.preset", settings.teacher.preset, "ldm-unet")):
        if get_preset_info(name).family != family:
            raise ValueError(f"{field}: {name!r} is a {get_preset_info(name).family} model; a latent profile needs "
                             f"a {family} one")
    dd = get_preset(fs.preset)["ddconfig"]
    data = settings.data
    if dd["in_channels"] != data.channels:
        raise ValueError(f"teacher.latent.first_stage.preset: {fs.preset!r} takes {dd['in_channels']}-channel "
                         f"images, data has {data.channels}")
    if dd["resolution"] % data.image_size:
        raise ValueError(f"teacher.latent.first_stage.preset: {fs.preset!r} works on {dd['resolution']}px images; "
                         f"data.image_size {data.image_size} must divide it "
                         "(images are upsampled by an integer factor)")
    factor = 2 ** (len(dd["ch_mult"]) - 1)
    latent_shape = (get_preset(fs.preset)["embed_dim"], dd["resolution"] // factor)
    if preset_shape(settings.teacher.preset) != latent_shape:
        shape = preset_shape(settings.teacher.preset)
        raise ValueError(f"teacher.preset: {settings.teacher.preset!r} works on {shape[0]}x{shape[1]}x{shape[1]} "
                         f"latents, the first stage makes {latent_shape[0]}x{latent_shape[1]}x{latent_shape[1]}")
    if fs.source == "import" and fs.checkpoint is None and settings.teacher.source != "import":
        raise ValueError("teacher.latent.first_stage.checkpoint: importing the first stage needs its checkpoint "
                         "(or teacher.source 'import', whose checkpoint holds first_stage_model.*)")
    diffusion = settings.diffusion
    if diffusion.learn_sigma or diffusion.noise_schedule != "linear" or diffusion.timestep_respacing:
        raise ValueError("diffusion: latent profiles use LDM's process: noise_schedule 'linear' (sqrt-linear between "
                         "teacher.latent.linear_start and linear_end), learn_sigma false, no timestep_respacing")
    if settings.distill.clip_denoised:
        raise ValueError("distill.clip_denoised: LDM teachers never clip x0; set it to false")
    _steps("evaluate.respacing", settings.evaluate.respacing, diffusion.steps)
    _steps("reference.respacing", settings.reference.respacing, diffusion.steps)
    if not settings.evaluate.use_ddim and settings.evaluate.respacing not in ("", str(diffusion.steps)):
        raise ValueError("evaluate.respacing: ancestral latent sampling runs all T steps; set use_ddim true for fewer")
