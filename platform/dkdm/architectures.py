"""The architectures a profile names: built-in presets, user presets and inline `{family: ..., ...}` mappings.

User presets come from `configs/presets.yaml` (shared by all profiles of a project) and the profile's own
`presets:` section (which wins). After validation every teacher/student field holds either a built-in preset
name or an `ArchRef` (a name carrying its config), so the stages pass names around exactly as before.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import PlainSerializer

USER_PRESETS_FILE = Path("configs/presets.yaml")


def _dump(value: Any) -> Any:
    # An inline architecture is written back as its mapping, so a resolved profile reloads to the same network.
    from training.models.arch import ArchRef

    if isinstance(value, ArchRef) and value.origin == "inline":
        return dict(value.config)
    return str(value) if isinstance(value, str) else value


# What a teacher/student field of a profile accepts: a preset name or an inline mapping.
ArchSpec = Annotated[str | dict[str, Any], PlainSerializer(_dump)]


def read_presets_file(path: Path = USER_PRESETS_FILE) -> dict[str, Any]:
    """The mapping in configs/presets.yaml ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of preset names to architectures")
    return data


def user_presets(section: Mapping[str, Any], *, file: Path = USER_PRESETS_FILE) -> dict[str, dict[str, Any]]:
    """Validated user presets: the file's, then the profile section's (same name: the profile wins)."""
    from training.models import list_presets
    from training.models.arch import arch_config

    builtin = set(list_presets(include_aliases=True))
    out: dict[str, dict[str, Any]] = {}
    for origin, entries in ((str(file), read_presets_file(file)), ("presets", dict(section))):
        for name, config in entries.items():
            field = f"{origin}.{name}" if origin == "presets" else f"{origin}: {name}"
            if not isinstance(name, str) or not name or any(ch in name for ch in "/\\ @"):
                raise ValueError(f"{field}: a preset name is non-empty without '/', '\\', ' ' or '@'")
            if name in builtin:
                raise ValueError(f"{field}: {name!r} is a built-in preset; give yours another name")
            if not isinstance(config, Mapping):
                raise ValueError(f"{field}: expected a mapping {{family: ..., <its config keys>}}")
            out[name] = arch_config(config, field=field)
    return out


def resolve(field: str, spec: Any, presets: Mapping[str, Mapping[str, Any]]) -> str:
    """A built-in preset name as is, or an ArchRef for a user preset or an inline mapping."""
    from training.models import get_preset_info
    from training.models.arch import ArchRef, arch_config, inline_name

    if isinstance(spec, ArchRef):
        return spec
    if isinstance(spec, Mapping):
        config = arch_config(spec, field=field)
        return ArchRef(inline_name(config), config, "inline")
    if spec in presets:
        return ArchRef(spec, presets[spec], "user")
    try:
        get_preset_info(spec)
    except ValueError as err:
        mine = f" or a user preset ({', '.join(sorted(presets))})" if presets else ""
        raise ValueError(f"{field}: {str(err).removeprefix('preset: ')}{mine}") from None
    return spec


def resolve_settings(settings: Any) -> None:
    """Replace the profile's teacher and student specs by resolved names, in place (called while validating)."""
    presets = user_presets(settings.presets)
    teacher = settings.teacher.model_copy(
        update={"preset": resolve("teacher.preset", settings.teacher.preset, presets)})
    runs = {name: spec.model_copy(update={"student": resolve(f"distill.runs.{name}.student", spec.student, presets)})
            if spec.student is not None else spec for name, spec in settings.distill.runs.items()}
    distill = settings.distill.model_copy(update={
        "student": resolve("distill.student", settings.distill.student, presets), "runs": runs})
    for name, value in (("presets", presets), ("teacher", teacher), ("distill", distill)):
        object.__setattr__(settings, name, value)  # the settings are frozen; this runs inside their validator
    if settings.space == "pixel":
        _check_variance(settings)


def _check_variance(settings: Any) -> None:
    """The teacher's output channels must be what the profile's diffusion reads (eps, or eps + variance)."""
    from training.models import get_preset
    from training.models.arch import learns_sigma

    teacher = settings.teacher.preset
    if learns_sigma(get_preset(teacher)) != settings.diffusion.learn_sigma:
        raise ValueError(f"teacher.preset: {str(teacher)!r} has learn_sigma={learns_sigma(get_preset(teacher))} but "
                         f"diffusion.learn_sigma is {settings.diffusion.learn_sigma}; they must agree")


def describe(name: str) -> str:
    """`name: family, N parameters` (one line; what `dkdm presets` and `dkdm profile show` print)."""
    from training.models import get_preset_info

    info = get_preset_info(name)
    return f"{name}: {info.family}, {info.num_parameters:,} parameters"


def profile_architectures(settings: Any) -> list[tuple[str, str]]:
    """(role, name) of every architecture a profile uses: the teacher, the default student, each run's."""
    roles = [("teacher", settings.teacher.preset), ("distill.student", settings.distill.student)]
    roles += [(f"distill.runs.{run}.student", spec.student) for run, spec in settings.distill.runs.items()
              if spec.student is not None]
    return roles
