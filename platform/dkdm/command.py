"""The edge every `dkdm` command shares (the main CLI, `dkdm tune`, `dkdm reproduce`): one resolved context per
command, and user errors as one line on stderr with exit code 2. It lives apart from cli.py so that subcommand
modules can use it without importing the CLI that imports them.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from dkdm.errors import EXIT_USAGE, DkdmError

ProfileOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time on Python 3.10 too
    typer.Option("--profile", "-p", help="profile name (see `dkdm profile list`) or a YAML file; "
                 "default: params.yaml, the active profile"),
]

if TYPE_CHECKING:
    from dkdm.console import Context

# Errors the training code raises for bad inputs (missing files, wrong shapes, mismatched checkpoints).
USER_ERRORS: tuple[type[BaseException], ...] = (DkdmError, ValueError, FileNotFoundError, KeyError, PermissionError)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    first = (message.strip().splitlines() or ["error"])[0]
    sys.stderr.write(f"dkdm: error: {first}\n")
    raise typer.Exit(code)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one line on stderr and exit 2; `DKDM_DEBUG=1` shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="dkdm: %(message)s")
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except USER_ERRORS as err:
            if os.environ.get("DKDM_DEBUG"):
                raise
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            fail(text or type(err).__name__)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as err:  # a bug, not the user's fault: still one line, but say how to see more
            if os.environ.get("DKDM_DEBUG"):
                raise
            if _is_training_input_error(err):
                fail(str(err) or type(err).__name__)
            fail(f"internal error {type(err).__name__}: {err} (set DKDM_DEBUG=1 for the traceback)", 1)

    return wrapper


def _is_training_input_error(err: Exception) -> bool:
    """Checkpoint problems (bad file, key mismatch, refused pickle) are the user's to fix, not bugs."""
    from training.models.checkpoint import CheckpointError  # deferred: torch, only on the error path

    return isinstance(err, CheckpointError)


def context(profile: str | None, overrides: dict[str, Any] | None = None) -> Context:
    """Resolve and validate the profile once; every command starts here, before any work."""
    # Deferred: settings pull in torch (through training.diffusion), which `dkdm --help` must not pay for.
    from dkdm import profiles
    from dkdm.console import Context, apply_runtime
    from dkdm.settings import load_settings

    path = profiles.resolve(profile)
    settings = load_settings(path, overrides)
    if settings.tracking.enabled:
        from dkdm.tracking import check_reachable  # deferred: only tracked commands need it

        check_reachable(settings.tracking)  # an unreachable server is an error before any work, not after
    apply_runtime(settings)
    return Context(settings=settings, profile_file=path)
