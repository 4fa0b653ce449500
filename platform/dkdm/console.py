"""What every command shares: the loaded settings, the device, rich progress bars, tables and the one-line summary.

Everything printed through rich goes through this module, with markup and emoji codes off: paths, study and run
names are printed as given (a storage path such as `/data/[/x]/opt.journal` or a `:memo:` in a name is text, not a
tag). Style comes from `style=` arguments, never from markup inside the printed string.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dkdm.errors import DkdmError
from dkdm.settings import Settings

# Verbatim text: no markup, no emoji codes, no highlighting of numbers or paths.
PLAIN: dict[str, Any] = {"markup": False, "emoji": False, "highlight": False}
err_console = Console(stderr=True, soft_wrap=True, **PLAIN)
out_console = Console(soft_wrap=True, **PLAIN)
# Piped or captured output has no width: wide enough that no column of a table is cut.
PIPED_WIDTH = 160


@dataclass
class Context:
    """The resolved run context a stage function receives (parsed once, at the CLI edge)."""

    settings: Settings
    profile_file: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def device(self) -> Any:
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


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Any]:
    """A rich bar on stderr; `advance(n)` moves it. Disabled (a no-op) when not on a terminal."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


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
