"""`dkdm`: the command line of the platform. Each command is a thin shell: parse settings once, call one
stage function, print a one-line summary. A user error is one line on stderr and exit code 2.

Pipeline stages (what dvc.yaml runs): data, autoencoder (latent profiles only), teacher, features, reference,
prepare-pool, distill, evaluate, report. Each command imports its stage module inside the function: the stages
load torch, which `dkdm --help` and the profile commands must not wait for.

The heavy commands (teacher, train-teacher, reference, prepare-pool, distill, train, evaluate, sample) run as one
job of `runtime.nproc_per_node` x `runtime.nnodes` processes (`run_job`: they relaunch themselves through torch's
elastic launcher, or join the job a user's `torchrun` started). Their options avoid every prefix of a torchrun
option (torchrun reads `--run` as its `--run-path`): the run is a positional argument.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dkdm.byo_cli import register as register_byo_commands
from dkdm.command import ProfileOpt, context, handles_errors
from dkdm.errors import DkdmError
from dkdm.launch import run_job
from dkdm.reproduce.commands import app as reproduce_app
from dkdm.tuning.commands import app as tune_app

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
app.add_typer(tune_app, name="tune", help="Optuna studies over the settings (see the README)")
app.add_typer(reproduce_app, name="reproduce", help="The paper's claims over methods x seeds x rho, with verdicts")
register_byo_commands(app)  # presets, inspect-teacher, export (your own architectures and diffusers models)

RunArg = Annotated[Optional[str], typer.Argument(metavar="RUN", show_default=False,
                                                  help="run name from distill.runs (e.g. dynamic, data_free)")]
# Kept for older scripts. Under torchrun write RUN (or -r): torchrun's own parser takes `--run` for `--run-path`.
RunOpt = Annotated[Optional[str], typer.Option("--run", "-r", help="the same as RUN (older form)")]


def run_name(positional: str | None, option: str | None, *, required: bool = True) -> str | None:
    """The run named by RUN or -r/--run (one of them, or the same name twice)."""
    if positional is not None and option is not None and positional != option:
        raise DkdmError(f"run: given as {positional!r} and as -r/--run {option!r}; give it once")
    name = positional if positional is not None else option
    if name is None and required:
        raise DkdmError("missing RUN: the run name from distill.runs, e.g. `dkdm distill dynamic`")
    return name


# --------------------------------------------------------------------------- pipeline stages


@app.command("data")
@handles_errors
def data_cmd(profile: ProfileOpt = None) -> None:
    """Load the profile's dataset through its real loader and write outputs/data (uint8 NHWC .npz)."""
    from dkdm.stages import data

    data.run(context(profile))


@app.command("autoencoder")
@handles_errors
def autoencoder_cmd(profile: ProfileOpt = None) -> None:
    """Train (or import) the first stage of a latent profile (dvc.yaml: `first_stage@autoencoder`); a pixel profile has
    none and is refused."""
    from dkdm.stages import autoencoder

    autoencoder.run(context(profile))


@app.command("teacher")
@handles_errors
def teacher_cmd(profile: ProfileOpt = None) -> None:
    """The profile's teacher: train it (teacher.source: train) or import its .pt (teacher.source: import)."""
    from dkdm.stages import teacher

    run_job(context(profile), lambda ctx, dist: teacher.run(ctx, dist=dist))


@app.command("train-teacher")
@handles_errors
def train_teacher_cmd(
    profile: ProfileOpt = None,
    iterations: Annotated[Optional[int], typer.Option(help="override teacher.train.iterations")] = None,
) -> None:
    """Train the teacher preset on the real data (the embedded CPU profiles), tracked in MLflow."""
    from dkdm.stages import teacher

    run_job(context(profile), lambda ctx, dist: teacher.train(ctx, iterations=iterations, dist=dist))


@app.command("import-teacher")
@handles_errors
def import_teacher_cmd(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="foreign ADM / DDPM-IP .pt, or a diffusers folder "
                                                         "(default: teacher.checkpoint)")] = None,
    preset: Annotated[Optional[str], typer.Option(help="architecture preset (default: teacher.preset)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output .safetensors (default: the pipeline's teacher)")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Convert a foreign .pt state dict (loaded with weights_only=True) plus a preset, or a diffusers UNet2DModel
    folder with its scheduler config, into dkdm's safetensors format."""
    from dkdm.stages import teacher

    ctx = context(profile)
    teacher.import_(ctx, checkpoint=checkpoint, preset=preset, out=out)


@app.command("features")
@handles_errors
def features_cmd(profile: ProfileOpt = None) -> None:
    """Prepare the feature space (features.kind: digits classifier, a network learned on your data, or Inception
    weights) and the real data's reference statistics."""
    from dkdm.stages import features

    features.run(context(profile))


@app.command("reference")
@handles_errors
def reference_cmd(profile: ProfileOpt = None) -> None:
    """Sample the teacher's set D' (data-free training set, noise floor) and the FD'/FID' reference: a held-out set
    drawn with reference.heldout_seed, or D' itself when that is null."""
    from dkdm.stages import reference

    run_job(context(profile), lambda ctx, dist: reference.run(ctx, dist=dist))


@app.command("prepare-pool")
@handles_errors
def prepare_pool_cmd(
    profile: ProfileOpt = None,
    out: Annotated[
        Optional[Path], typer.Option(help="output pool file (default: outputs/pool/pool.safetensors)")
    ] = None,
) -> None:
    """Prepare the dynamic-iterative pool with the teacher (resumable: rerun after an interruption)."""
    from dkdm.stages import pool

    run_job(context(profile), lambda ctx, dist: pool.run(ctx, out=out, dist=dist))


@app.command("distill")
@handles_errors
def distill_cmd(run: RunArg = None, profile: ProfileOpt = None, run_opt: RunOpt = None) -> None:
    """Train one student of distill.runs (`dkdm distill dynamic`): DKDM (dynamic / shuffled / iterative) or a
    baseline; resumable. Over runtime.nproc_per_node processes (or a user's torchrun) one DDP job: batch_size per
    process, one pool per process."""
    from dkdm.stages import distill

    name = run_name(run, run_opt)
    run_job(context(profile), lambda ctx, dist: distill.run(ctx, name, allowed=None, dist=dist))


@app.command("train")
@handles_errors
def train_cmd(run: RunArg = None, profile: ProfileOpt = None, run_opt: RunOpt = None) -> None:
    """Train a baseline of distill.runs (data_free / data_limited / data_based) with the ordinary hybrid loss."""
    from dkdm.stages import distill
    from training.distill.config import DATASET_METHODS

    name = run_name(run, run_opt)
    run_job(context(profile), lambda ctx, dist: distill.run(ctx, name, allowed=DATASET_METHODS, dist=dist))


@app.command("evaluate")
@handles_errors
def evaluate_cmd(
    run: RunArg = None,
    run_opt: RunOpt = None,
    checkpoint: Annotated[
        Optional[Path], typer.Option(help="evaluate this checkpoint instead of a run's student")
    ] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="evaluate the pipeline's teacher")] = False,
    profile: ProfileOpt = None,
) -> None:
    """Sample a student (EMA, evaluate.respacing steps) and score it: FD family, precision/recall, cost figures."""
    from dkdm.stages import evaluate

    name = run_name(run, run_opt, required=False)
    run_job(context(profile),
            lambda ctx, dist: evaluate.run(ctx, run=name, checkpoint=checkpoint, teacher=teacher, dist=dist))


@app.command("report")
@handles_errors
def report_cmd(profile: ProfileOpt = None) -> None:
    """Compare every evaluated run with the teacher and the noise floor: outputs/report/report.md + summary.json."""
    from dkdm.stages import report

    report.run(context(profile))


# --------------------------------------------------------------------------- tools


@app.command("sample")
@handles_errors
def sample_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a dkdm checkpoint (.safetensors with its .json sidecar)")],
    num: Annotated[int, typer.Option("--num-samples", "-n", "--num", min=1,
                                      help="number of samples (under torchrun: -n or --num-samples)")] = 64,
    steps: Annotated[str, typer.Option(help="respaced steps: '50', 'ddim25', '' = all")] = "50",
    ddim: Annotated[bool, typer.Option(help="DDIM instead of ancestral IDDPM steps")] = False,
    eta: Annotated[float, typer.Option(help="DDIM eta")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    ema: Annotated[bool, typer.Option(help="use the EMA weights when the checkpoint has them")] = True,
    out: Annotated[
        Path, typer.Option(help="samples .npz (uint8 NHWC under arr_0, ADM evaluator layout)")
    ] = Path("samples.npz"),
    grid: Annotated[Optional[Path], typer.Option(help="PNG grid of the first 64 (default: next to --out)")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Draw samples from a checkpoint: an ADM-compatible .npz and a PNG grid; deterministic for a seed."""
    from dkdm.stages import sample

    run_job(context(profile), lambda ctx, dist: sample.run(
        ctx, checkpoint=checkpoint, num=num, steps=steps, ddim=ddim, eta=eta, batch_size=batch_size, seed=seed,
        ema=ema, out=out, grid=grid, dist=dist))


@app.command("dashboard")
@handles_errors
def dashboard_cmd(
    port: Annotated[int, typer.Option(help="port of the Streamlit server")] = 8501,
    address: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 to share it)")] = "127.0.0.1",
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL for the studies page")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Serve the Streamlit dashboard over the MLflow runs (tracking.uri), Optuna studies and the paper's tables."""
    from dkdm.dashboard import run_dashboard  # deferred: pandas and the queries load only for this command

    ctx = context(profile)
    code = run_dashboard(port=port, address=address, tracking_uri=ctx.settings.tracking.uri, storage=storage)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- profiles


@profile_app.command("list")
@handles_errors
def profile_list() -> None:
    """Every available profile, with the active one (params.yaml) marked."""
    from dkdm import profiles  # deferred, as yaml: `dkdm --help` loads neither

    active = profiles.profile_name(profiles.ACTIVE_FILE) if profiles.ACTIVE_FILE.is_file() else None
    for name, path in sorted(profiles.available().items()):
        mark = "*" if name == active else " "
        typer.echo(f"{mark} {name:<14} {path}")


@profile_app.command("show")
@handles_errors
def profile_show(
    profile: Annotated[Optional[str], typer.Argument(help="name or file (default: params.yaml)")] = None,
) -> None:
    """Print every resolved setting of a profile (after .env and DKDM_* environment overrides)."""
    import yaml

    from dkdm.architectures import describe, profile_architectures

    ctx = context(profile)
    # A non-ASCII or long value is printed as written: no \x escapes, no folding at 80 columns.
    typer.echo(yaml.safe_dump(ctx.settings.for_log(), sort_keys=False, allow_unicode=True, width=2**16).rstrip())
    for role, name in profile_architectures(ctx.settings):  # as YAML comments: the output stays a valid profile
        typer.echo(f"# {role} = {describe(name)}")


@profile_app.command("use")
@handles_errors
def profile_use(name: Annotated[str, typer.Argument(help="profile to activate (see `dkdm profile list`)")]) -> None:
    """Make NAME the active profile: params.yaml is replaced by its file, atomically, after validation."""
    from dkdm import profiles
    from dkdm.architectures import describe, profile_architectures
    from dkdm.console import summary  # deferred: console imports the settings, and they import torch
    from dkdm.settings import load_settings

    path = profiles.use(name)
    summary(f"active profile: {name} ({path}); run `dvc repro` (or `dvc status` to see what changes)")
    for role, arch in profile_architectures(load_settings(path)):
        typer.echo(f"  {role} = {describe(arch)}")
