"""What every command shares: the loaded settings, the device, rich progress bars, tables and the one-line summary.

Everything printed through rich goes through this module, with markup and emoji codes off: paths, study and run
names are printed as given (a storage path such as `/data/[/x]/opt.journal` or a `:memo:` in a name is text, not a
tag). Style comes from `style=` arguments, never from markup inside the printed string.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from dkdm.errors import DkdmError
from dkdm.settings import Settings

# Verbatim text: no markup, no emoji codes, no highlighting of numbers or paths.
PLAIN: dict[str, bool] = {"markup": False, "emoji": False, "highlight": False}
err_console = Console(stderr=True, soft_wrap=True, **PLAIN)
out_console = Console(soft_wrap=True, **PLAIN)
# Piped or captured output has no width: wide enough that no column of a table is cut.
PIPED_WIDTH = 160

if TYPE_CHECKING:
    import torch


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


def print_table(table: Table) -> None:
    """A table on stdout: on a terminal at its width, piped or captured at PIPED_WIDTH. Its caption follows as one
    unwrapped line (not wrapped to the table's width), so a long storage path in it stays one copyable string."""
    console = out_console if out_console.is_terminal else Console(width=PIPED_WIDTH, **PLAIN)
    caption = table.caption
    table.caption = None
    try:
        console.print(table)
    finally:
        table.caption = caption
    if caption:
        console.print(caption, soft_wrap=True)
