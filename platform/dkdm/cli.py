"""`dkdm`: the command line of the platform. Each command is a thin shell: parse settings once, call one
stage function, print a one-line summary. A user error is one line on stderr and exit code 2.

Pipeline stages (what dvc.yaml runs): data, autoencoder (latent profiles only), teacher, features, reference, prepare-pool, distill, evaluate, report.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from dkdm.errors import EXIT_USAGE, DkdmError

app = typer.Typer(
    name="dkdm",
    help="Data-free knowledge distillation of diffusion models (DKDM): pipeline stages, sampling, evaluation, "
    "reports and profiles. `dvc repro` runs the whole pipeline of the active profile (params.yaml).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
profile_app = typer.Typer(help="List, show and switch profiles (the active one is params.yaml).",
                          no_args_is_help=True, rich_markup_mode=None)
app.add_typer(profile_app, name="profile")

ProfileOpt = Annotated[
    Optional[str],
    typer.Option("--profile", "-p", help="profile name (see `dkdm profile list`) or a YAML file; "
                 "default: params.yaml, the active profile"),
]
RunOpt = Annotated[str, typer.Option("--run", "-r", help="run name from distill.runs (e.g. dynamic, data_free)")]
# Errors the training code raises for bad inputs (missing files, wrong shapes, mismatched checkpoints).
USER_ERRORS: tuple[type[BaseException], ...] = (DkdmError, ValueError, FileNotFoundError, KeyError, PermissionError)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
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
            _fail(text or type(err).__name__)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as err:  # a bug, not the user's fault: still one line, but say how to see more
            if os.environ.get("DKDM_DEBUG"):
                raise
            if _is_training_input_error(err):
                _fail(str(err) or type(err).__name__)
            _fail(f"internal error {type(err).__name__}: {err} (set DKDM_DEBUG=1 for the traceback)", 1)

    return wrapper


def _is_training_input_error(err: Exception) -> bool:
    """Checkpoint problems (bad file, key mismatch, refused pickle) are the user's to fix, not bugs."""
    try:
        from training.models.checkpoint import CheckpointError
    except ImportError:
        return False
    return isinstance(err, CheckpointError)


def context(profile: str | None, overrides: dict[str, Any] | None = None):
    """Resolve and validate the profile once; every command starts here, before any work."""
    from dkdm import profiles
    from dkdm.console import Context, apply_runtime
    from dkdm.settings import load_settings

    path = profiles.resolve(profile)
    settings = load_settings(path, overrides)
    if settings.tracking.enabled:
        from dkdm.tracking import check_reachable

        check_reachable(settings.tracking)  # an unreachable server is an error before any work, not after
    apply_runtime(settings)
    return Context(settings=settings, profile_file=path)


def _stage(module: str):
    return importlib.import_module(f"dkdm.stages.{module}")


# --------------------------------------------------------------------------- pipeline stages


@app.command("data")
@handles_errors
def data_cmd(profile: ProfileOpt = None) -> None:
    """Load the profile's dataset through its real loader and write outputs/data (uint8 NHWC .npz)."""
    _stage("data").run(context(profile))


@app.command("autoencoder")
@handles_errors
def autoencoder_cmd(profile: ProfileOpt = None) -> None:
    """Latent profiles: train (or import) the first stage; pixel profiles: record that there is none."""
    _stage("autoencoder").run(context(profile))


@app.command("teacher")
@handles_errors
def teacher_cmd(profile: ProfileOpt = None) -> None:
    """The profile's teacher: train it (teacher.source: train) or import its .pt (teacher.source: import)."""
    _stage("teacher").run(context(profile))


@app.command("train-teacher")
@handles_errors
def train_teacher_cmd(
    profile: ProfileOpt = None,
    iterations: Annotated[Optional[int], typer.Option(help="override teacher.train.iterations")] = None,
) -> None:
    """Train the teacher preset on the real data (the embedded CPU profiles), tracked in MLflow."""
    ctx = context(profile)
    _stage("teacher").train(ctx, iterations=iterations)


@app.command("import-teacher")
@handles_errors
def import_teacher_cmd(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="foreign ADM / DDPM-IP .pt (default: teacher.checkpoint)")] = None,
    preset: Annotated[Optional[str], typer.Option(help="architecture preset (default: teacher.preset)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output .safetensors (default: the pipeline's teacher)")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Convert a foreign .pt state dict (loaded with weights_only=True) plus a preset into dkdm's safetensors format."""
    ctx = context(profile)
    _stage("teacher").import_(ctx, checkpoint=checkpoint, preset=preset, out=out)


@app.command("features")
@handles_errors
def features_cmd(profile: ProfileOpt = None) -> None:
    """Prepare the feature space (digits classifier or Inception weights) and the real data's reference statistics."""
    _stage("features").run(context(profile))


@app.command("reference")
@handles_errors
def reference_cmd(profile: ProfileOpt = None) -> None:
    """Sample the teacher's set D' (FD'/FID' reference, noise floor, data-free training set) and score the teacher."""
    _stage("reference").run(context(profile))


@app.command("prepare-pool")
@handles_errors
def prepare_pool_cmd(
    profile: ProfileOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="output pool file (default: outputs/pool/pool.safetensors)")] = None,
) -> None:
    """Prepare the dynamic-iterative pool with the teacher (resumable: rerun after an interruption)."""
    _stage("pool").run(context(profile), out=out)


@app.command("distill")
@handles_errors
def distill_cmd(run: RunOpt, profile: ProfileOpt = None) -> None:
    """Train one student of distill.runs: DKDM (dynamic / shuffled / iterative) or a baseline; resumable."""
    _stage("distill").run(context(profile), run, allowed=None)


@app.command("train")
@handles_errors
def train_cmd(run: RunOpt, profile: ProfileOpt = None) -> None:
    """Train a baseline of distill.runs (data_free / data_limited / data_based) with the ordinary hybrid loss."""
    from training.distill.config import DATASET_METHODS

    _stage("distill").run(context(profile), run, allowed=DATASET_METHODS)


@app.command("evaluate")
@handles_errors
def evaluate_cmd(
    run: Annotated[Optional[str], typer.Option("--run", "-r", help="run name from distill.runs")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="evaluate this checkpoint instead of a run's student")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="evaluate the pipeline's teacher")] = False,
    profile: ProfileOpt = None,
) -> None:
    """Sample a student (EMA, evaluate.respacing steps) and score it: FD family, precision/recall, cost figures."""
    _stage("evaluate").run(context(profile), run=run, checkpoint=checkpoint, teacher=teacher)


@app.command("report")
@handles_errors
def report_cmd(profile: ProfileOpt = None) -> None:
    """Compare every evaluated run with the teacher and the noise floor: outputs/report/report.md + summary.json."""
    _stage("report").run(context(profile))


# --------------------------------------------------------------------------- tools


@app.command("sample")
@handles_errors
def sample_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a dkdm checkpoint (.safetensors with its .json sidecar)")],
    num: Annotated[int, typer.Option("--num", "-n", min=1, help="number of samples")] = 64,
    steps: Annotated[str, typer.Option(help="respaced steps: '50', 'ddim25', '' = all")] = "50",
    ddim: Annotated[bool, typer.Option(help="DDIM instead of ancestral IDDPM steps")] = False,
    eta: Annotated[float, typer.Option(help="DDIM eta")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    ema: Annotated[bool, typer.Option(help="use the EMA weights when the checkpoint has them")] = True,
    out: Annotated[Path, typer.Option(help="samples .npz (uint8 NHWC under arr_0, ADM evaluator layout)")] = Path("samples.npz"),
    grid: Annotated[Optional[Path], typer.Option(help="PNG grid of the first 64 (default: next to --out)")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Draw samples from a checkpoint: an ADM-compatible .npz and a PNG grid; deterministic for a seed."""
    ctx = context(profile)
    _stage("sample").run(ctx, checkpoint=checkpoint, num=num, steps=steps, ddim=ddim, eta=eta,
                         batch_size=batch_size, seed=seed, ema=ema, out=out, grid=grid)


@app.command("dashboard")
@handles_errors
def dashboard_cmd(
    port: Annotated[int, typer.Option(help="port of the Streamlit server")] = 8501,
    address: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 to share it)")] = "127.0.0.1",
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL for the studies page")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Serve the Streamlit dashboard over the MLflow runs (tracking.uri), Optuna studies and the paper's tables."""
    ctx = context(profile)
    try:
        from dkdm.dashboard import run_dashboard
    except ImportError as err:
        raise DkdmError(f"the dashboard is not installed in this checkout ({err})") from None
    code = run_dashboard(port=port, address=address, tracking_uri=ctx.settings.tracking.uri, storage=storage)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- profiles


@profile_app.command("list")
@handles_errors
def profile_list() -> None:
    """Every available profile, with the active one (params.yaml) marked."""
    from dkdm import profiles

    active = profiles.profile_name(profiles.ACTIVE_FILE) if profiles.ACTIVE_FILE.is_file() else None
    for name, path in sorted(profiles.available().items()):
        mark = "*" if name == active else " "
        typer.echo(f"{mark} {name:<14} {path}")


@profile_app.command("show")
@handles_errors
def profile_show(profile: Annotated[Optional[str], typer.Argument(help="name or file (default: params.yaml)")] = None) -> None:
    """Print every resolved setting of a profile (after .env and DKDM_* environment overrides)."""
    import yaml

    ctx = context(profile)
    typer.echo(yaml.safe_dump(ctx.settings.for_log(), sort_keys=False).rstrip())


@profile_app.command("use")
@handles_errors
def profile_use(name: Annotated[str, typer.Argument(help="profile to activate (see `dkdm profile list`)")]) -> None:
    """Make NAME the active profile: params.yaml is replaced by its file, atomically, after validation."""
    from dkdm import profiles
    from dkdm.console import summary

    path = profiles.use(name)
    summary(f"active profile: {name} ({path}); run `dvc repro` (or `dvc status` to see what changes)")


# Commands contributed by optional modules: each brings its own typer app and is offered only where installed.
OPTIONAL_COMMANDS = {
    "tune": ("dkdm.tuning", "Optuna studies over the settings (see the README)"),
    "reproduce": ("dkdm.reproduce.commands", "The paper's claims over methods x seeds x rho, with verdicts"),
}


def _register_optional_commands() -> None:
    for name, (module, help_text) in OPTIONAL_COMMANDS.items():
        try:
            if importlib.util.find_spec(module) is None:
                continue
            extension = importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a broken optional module must not take the whole CLI down
            logging.getLogger(__name__).warning("dkdm %s unavailable: %s", name, err)
            continue
        if isinstance(getattr(extension, "app", None), typer.Typer):
            app.add_typer(extension.app, name=name, help=help_text)


_register_optional_commands()


def main() -> None:
    app()
