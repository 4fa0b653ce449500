"""One check, run first by every stage that uses the teacher: does the teacher on disk fit the active profile?

The teacher's sidecar records the diffusion it was trained with and the shape it works on. A profile that asks
for another T, schedule, variance or image shape would build a pool, a reference set or metrics that mean
nothing, so the stage stops before it writes anything, with one line naming both values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dkdm.errors import DkdmError
from dkdm.settings import Settings
from dkdm.stages.common import TEACHER_FILE


def _variance(diffusion: dict[str, Any]) -> str:
    if diffusion.get("learn_sigma"):
        return "learned"
    return "fixed-small" if diffusion.get("sigma_small") else "fixed-large"


def _shape(model: dict[str, Any]) -> tuple[int, int, int] | None:
    size = model.get("image_size") or model.get("input_size")
    channels = model.get("in_channels")
    return (int(channels), int(size), int(size)) if size and channels else None


def _latent_shape(settings: Settings) -> tuple[int, int, int]:
    from training.models import get_preset
    from training.models.vq import coerce_vq_config

    config = coerce_vq_config(get_preset(settings.teacher.latent.first_stage.preset))
    return tuple(int(v) for v in config.latent_shape(config.ddconfig.resolution))


def expected(settings: Settings) -> dict[str, tuple[str, Any]]:
    """What the profile needs of a teacher: per property, (the setting that decides it, its value)."""
    d = settings.diffusion
    if settings.space == "latent":
        latent = settings.teacher.latent
        return {"T": ("diffusion.steps", d.steps),
                "schedule": ("teacher.latent.linear_start/linear_end",
                             f"linear {latent.linear_start}-{latent.linear_end}"),
                "latent shape": ("teacher.latent.first_stage", _latent_shape(settings))}
    channels, size = settings.data.channels, settings.data.image_size
    return {"T": ("diffusion.steps", d.steps),
            "schedule": ("diffusion.noise_schedule", d.noise_schedule),
            "variance": ("diffusion.learn_sigma/sigma_small", _variance(d.to_dict())),
            "prediction": ("diffusion.predict_xstart", "x0" if d.predict_xstart else "eps"),
            "image shape": ("data.channels/image_size", (channels, size, size))}


def recorded(meta: dict[str, Any]) -> dict[str, Any]:
    """The same properties as the checkpoint's sidecar records them."""
    diffusion, model = meta["diffusion_config"], meta["model_config"]
    if diffusion.get("space") == "latent":
        return {"T": diffusion.get("timesteps"),
                "schedule": f"linear {diffusion.get('linear_start')}-{diffusion.get('linear_end')}",
                "latent shape": _shape(model)}
    return {"T": diffusion.get("steps"), "schedule": diffusion.get("noise_schedule"),
            "variance": _variance(diffusion), "prediction": "x0" if diffusion.get("predict_xstart") else "eps",
            "image shape": _shape(model)}


def check_teacher_compat(settings: Settings, path: Path = TEACHER_FILE, *, what: str = "teacher") -> None:
    """Raise DkdmError (one line, both values) unless the checkpoint at `path` fits the profile.

    A missing file is left to the stage, which names the command that makes it; so is a sidecar that cannot be
    read (the stage's loader gives that error in full).
    """
    from training.models.checkpoint import CheckpointError, read_checkpoint_meta

    if not Path(path).is_file():
        return
    try:
        meta = read_checkpoint_meta(path)
    except CheckpointError as err:
        raise DkdmError(str(err)) from None
    space = "latent" if meta["diffusion_config"].get("space") == "latent" else "pixel"
    if space != settings.space:
        raise DkdmError(f"{path}: the {what} is a {space}-space model but the profile has space: {settings.space}; "
                        f"rerun `dkdm teacher` for this profile (or `dvc repro`)")
    have = recorded(meta)
    for name, (setting, value) in expected(settings).items():
        if have.get(name) is not None and _norm(have[name]) != _norm(value):
            raise DkdmError(
                f"{path}: the {what} was made with {name}={_show(have[name])}, the profile has {setting} = "
                f"{_show(value)}; set {setting} to match or rerun `dkdm teacher` for this profile")


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def check_if_teacher(settings: Settings, checkpoint: Path) -> None:
    """For tools given any checkpoint (`dkdm sample`): the full check when it is the pipeline's teacher."""
    if Path(checkpoint).is_file() and TEACHER_FILE.is_file() and Path(checkpoint).resolve() == TEACHER_FILE.resolve():
        check_teacher_compat(settings, TEACHER_FILE)


def check_evaluation(settings: Settings, target: Path, *, pipeline_file: bool) -> None:
    """`dkdm evaluate`: the teacher (its D' is the FD' reference), and the evaluated checkpoint itself when it is
    the pipeline's teacher or student (a --checkpoint from elsewhere is sampled with its own sidecar's diffusion)."""
    check_teacher_compat(settings)
    if pipeline_file:
        check_teacher_compat(settings, target, what="teacher" if Path(target) == TEACHER_FILE else "student")
