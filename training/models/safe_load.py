"""The one way foreign `.pt` files are read: `torch.load(weights_only=True)`, with a refusal that names the file and
the reason and gives only safe advice.

torch's own error text tells the reader to retry with `weights_only=False`, which runs whatever code the file
carries; none of that text is ever passed on.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

SAFE_ADVICE = ("use a file that holds only tensors (a plain state dict, or safetensors), e.g. the one from the "
               "model's original release")
# Lines of torch's message that only repeat its (unsafe) advice or point at its documentation.
_NOISE = re.compile(r"weights.?only|trusted source|can still be loaded|file an issue|documentation|arbitrary code",
                    re.IGNORECASE)


class UnsafeFileError(ValueError):
    """A foreign file that torch.load(weights_only=True) refuses or cannot read."""


def _reason(err: BaseException) -> tuple[str, str | None]:
    """(the useful part of torch's message, the blocked global it names if any)."""
    text = str(err)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _NOISE.search(line)]
    reason = lines[0] if lines else type(err).__name__
    return reason.removeprefix("WeightsUnpickler error:").strip() or type(err).__name__, \
        blocked.group(1) if blocked else None


def refusal(path: str | Path, err: BaseException, *, what: str = "checkpoint") -> str:
    """One line for a file torch.load(weights_only=True) failed on: the file, why, and what to do (safely)."""
    reason, blocked = _reason(err)
    if blocked:
        return (f"{path}: refused: this {what} contains pickled code (it references {blocked}) and is never "
                f"loaded; {SAFE_ADVICE}")
    return f"{path}: not a readable PyTorch {what} ({reason}); {SAFE_ADVICE}"


def load_weights_only(path: str | Path, *, what: str = "checkpoint") -> Any:
    """torch.load(path, weights_only=True) on the CPU; UnsafeFileError (one safe line) on any failure."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the loaders raise many types on bad input; all mean "refused"
        raise UnsafeFileError(refusal(path, err, what=what)) from None
