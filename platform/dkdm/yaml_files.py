"""The one reader of YAML files a user writes (profiles, params.yaml, the reproduction's params files).

A syntax error is a DkdmError naming the file, the line and the column (1-based, as editors count), so the CLI
prints it as one line with exit code 2 instead of a parser traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dkdm.errors import DkdmError


def load_yaml(path: Path) -> Any:
    """The document in `path` (None when empty); a missing, unreadable or malformed file is one DkdmError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DkdmError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DkdmError(f"{path}: cannot be read ({err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "syntax error"
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise DkdmError(f"{path}{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise DkdmError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None


def load_mapping(path: Path) -> dict[str, Any]:
    """A file of settings: a mapping at the top level (an empty file is an empty mapping)."""
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DkdmError(f"{path}: expected a mapping of settings (`key: value` lines) at the top level, "
                        f"got a {type(data).__name__}")
    return data
