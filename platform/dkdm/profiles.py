"""Profiles: named YAML files of settings. params.yaml holds the active one (what `dvc repro` runs).

A name resolves, in order, to: a path to a .yaml file; `configs/<name>.yaml` in the working directory
(your own profiles); `dkdm/configs/<name>.yaml` shipped with the package (default, ci, the paper profiles).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dkdm.errors import DkdmError
from dkdm.yaml_files import load_yaml

ACTIVE_FILE = Path("params.yaml")
USER_DIR = Path("configs")


def packaged_dir() -> Path:
    # Next to this module, also in an editable install (where importlib.resources may see a namespace).
    return Path(__file__).resolve().parent / "configs"


def available() -> dict[str, Path]:
    """Every profile name and its file (a user profile shadows a packaged one of the same name)."""
    found = {p.stem: p for p in sorted(packaged_dir().glob("*.yaml"))}
    if USER_DIR.is_dir():
        # configs/presets.yaml holds user architectures (dkdm.architectures), not a profile.
        found.update({p.stem: p for p in sorted(USER_DIR.glob("*.yaml")) if p.name != "presets.yaml"})
    return found


def resolve(name: str | None) -> Path:
    """The file of profile `name`; None means the active profile, params.yaml."""
    if name is None:
        if not ACTIVE_FILE.is_file():
            raise DkdmError(f"no {ACTIVE_FILE} in {Path.cwd()}: run from the repository root or pass --profile")
        return ACTIVE_FILE
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        if not as_path.is_file():
            raise DkdmError(f"--profile: file {name} does not exist")
        return as_path
    profiles = available()
    if name not in profiles:
        raise DkdmError(f"--profile: unknown profile {name!r}; available: {', '.join(sorted(profiles))}")
    return profiles[name]


def profile_name(path: Path) -> str:
    """The `profile:` value written in a profile file (falls back to the file's stem)."""
    data = load_yaml(path) or {}
    return str(data.get("profile", path.stem)) if isinstance(data, dict) else path.stem


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def use(name: str) -> Path:
    """Make profile `name` the active one: params.yaml becomes a copy of its file (comments kept), atomically.

    The profile is validated first, so a broken profile never replaces a working params.yaml.
    """
    from dkdm.profile_complete import completed
    from dkdm.settings import load_settings

    source = resolve(name)
    load_settings(source)
    if source.resolve() != ACTIVE_FILE.resolve():
        text = source.read_text()
        atomic_write_text(ACTIVE_FILE, completed(text) or text)
    return ACTIVE_FILE
