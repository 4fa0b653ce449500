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
    from training.models.arch import image_shape

    info = _info(name)
    return image_shape({"family": info.family, **info.config})


def check_pair(teacher: str, student: str, *, field: str) -> None:
    """A student can learn from a teacher only on the same image shape and the same kind of output."""
    t_shape, s_shape = preset_shape(teacher), preset_shape(student)
    if t_shape != s_shape:
        raise ValueError(
            f"{field}: student {student!r} works on {s_shape[0]}x{s_shape[1]}x{s_shape[1]} images, teacher "
            f"{teacher!r} on {t_shape[0]}x{t_shape[1]}x{t_shape[1]}; they cannot be paired"
        )
    from training.models.arch import learns_sigma

    t_sigma, s_sigma = (learns_sigma({"family": _info(n).family, **_info(n).config}) for n in (teacher, student))
    if t_sigma != s_sigma:
        raise ValueError(
            f"{field}: teacher {teacher!r} has learn_sigma={t_sigma} but student {student!r} has learn_sigma={s_sigma}"
        )
