"""The one error type the CLI turns into a single line on stderr and exit code 2."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

EXIT_USAGE = 2


class DkdmError(Exception):
    """A problem the user can fix (bad setting, missing file, unreachable server); never a bug."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(err: ValidationError, prefix: str = "") -> str:
    """The first problem of a pydantic error as `section.field: message (got value)`.

    Only the first is shown because the CLI promises one line; fixing it reveals the next.
    """
    item = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in item["loc"] if p not in ("function-after", "function-before"))
    loc = ".".join(part for part in (prefix, loc) if part)
    msg = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        return f"{loc}: unknown setting (check the spelling; `dkdm profile show` lists every setting)"
    if item["type"] == "missing":
        return f"{loc}: required setting is missing"
    shown = item.get("input")
    if isinstance(shown, dict) or item["type"] in ("value_error", "assertion_error"):
        return f"{loc}: {msg}" if loc else msg
    return f"{loc}: {msg} (got {_show(shown)})" if loc else f"{msg} (got {_show(shown)})"
