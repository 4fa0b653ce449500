"""A short profile made complete for DVC: every section DVC reads gets its defaults where the profile is silent.

dvc.yaml names individual parameters (e.g. `features.inception_weights`), and DVC refuses to run a stage whose
parameter is missing from params.yaml, while our settings have a default for it. So a profile that states only
what differs (what a user writes) is completed with those defaults when it becomes params.yaml.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return asdict(value)
    return value


def _merge(defaults: Any, mine: Any) -> Any:
    if isinstance(defaults, dict) and isinstance(mine, dict):
        return {**defaults, **{k: _merge(defaults.get(k), v) for k, v in mine.items()}}
    return mine


def dvc_params(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """The dotted parameter names dvc.yaml's stages read (templated ones, `...${key}`, left out)."""
    if not dvc_file.is_file():
        return []
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    names = []
    for stage in stages.values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        names += [p for p in body.get("params", []) if isinstance(p, str) and "${" not in p]
    return names


def _has(data: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def completed(text: str, dvc_file: Path = Path("dvc.yaml")) -> str | None:
    """params.yaml text for a profile that lacks some DVC parameters (None when it already has them all)."""
    from dkdm.settings import Settings
    from dkdm.settings_pipeline import with_pipeline_defaults

    mine = yaml.safe_load(text) or {}
    names = dvc_params(dvc_file)
    if all(_has(mine, name) for name in [*names, "pipeline.first_stage", "pipeline.first_stage_out"]):
        return None
    merged = dict(mine)
    # dvc.yaml builds its stage graph from `pipeline` (a foreach and a dependency, not params), set by `space`.
    merged["pipeline"] = with_pipeline_defaults(mine)["pipeline"]
    # Only the top-level keys DVC reads (sections and scalars such as `space`), taken from dvc.yaml itself so a
    # new stage parameter needs no edit here; where and how runs happen (runtime, tracking, tune) stay as written.
    for name in dict.fromkeys(dotted.split(".")[0] for dotted in names):
        default = _plain(Settings.model_fields[name].get_default(call_default_factory=True))
        merged[name] = _merge(default, mine.get(name)) if name in mine else default
    header = "# Written by `dkdm profile use` from a shorter profile: the defaults DVC needs are filled in.\n"
    return header + yaml.safe_dump(merged, sort_keys=False)
