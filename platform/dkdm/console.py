"""What every command shares: the loaded settings, the device and the one-line summary."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from dkdm.errors import DkdmError
from dkdm.settings import Settings

if TYPE_CHECKING:
    import torch

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


@dataclass
class Context:
    """The resolved run context a stage function receives (parsed once, at the CLI edge)."""

    settings: Settings
    profile_file: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def device(self) -> torch.device:
        import torch

        wanted = self.settings.runtime.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(wanted)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DkdmError(f"runtime.device: {wanted!r} requested but no CUDA device is available")
        return device

    @property
    def progress_enabled(self) -> bool:
        return self.settings.runtime.progress and sys.stderr.isatty()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def apply_runtime(settings: Settings) -> None:
    import torch

    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)


def summary(line: str) -> None:
    """The final one-line summary of a command, on stdout."""
    out_console.print(line)
