"""Checks on preset names and teacher/student pairs that settings run before any work."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.models.presets import Preset


def _info(name: str) -> Preset:
    from training.models import get_preset_info

    return get_preset_info(name)


def check_preset(field: str, name: str) -> None:
    try:
        _info(name)
    except ValueError as err:
        raise ValueError(f"{field}: {str(err).removeprefix('preset: ')}") from None


def preset_shape(name: str) -> tuple[int, int]:
    """(channels, image_size) a preset's network works on."""
    config = _info(name).config
    size = config.get("image_size") or config.get("input_size")
    return int(config.get("in_channels", 3)), int(size)


def check_pair(teacher: str, student: str, *, field: str) -> None:
    """A student can learn from a teacher only on the same image shape and the same kind of output."""
    t_shape, s_shape = preset_shape(teacher), preset_shape(student)
    if t_shape != s_shape:
        raise ValueError(
            f"{field}: student {student!r} works on {s_shape[0]}x{s_shape[1]}x{s_shape[1]} images, teacher "
            f"{teacher!r} on {t_shape[0]}x{t_shape[1]}x{t_shape[1]}; they cannot be paired"
        )
    t_sigma = bool(_info(teacher).config.get("learn_sigma", False))
    s_sigma = bool(_info(student).config.get("learn_sigma", False))
    if t_sigma != s_sigma:
        raise ValueError(
            f"{field}: teacher {teacher!r} has learn_sigma={t_sigma} but student {student!r} has learn_sigma={s_sigma}"
        )
