"""`dkdm reproduce ...`: the commands experiments/reproduce/dvc.yaml runs (each one stage), plus `use` to switch
the experiment's scale. Every command works in the experiment folder (`--dir`, default: the current folder)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dkdm.command import handles_errors
from dkdm.errors import DkdmError

app = typer.Typer(help="Reproduce the paper's claims: methods x seeds x rho with intervals and verdicts "
                  "(experiments/reproduce; `dvc --cd experiments/reproduce repro` runs all of it).",
                  no_args_is_help=True, rich_markup_mode=None)

DirOpt = Annotated[Path, typer.Option("--dir", "-d", help="the experiment folder (holds params.yaml)")]
ParamsOpt = Annotated[str, typer.Option("--params", help="params file inside the experiment folder")]
VariantOpt = Annotated[str, typer.Option("--variant", "-v", help="a name from experiment.variants")]
SeedOpt = Annotated[int, typer.Option("--seed", "-s", help="a seed from experiment.seeds")]


def _enter(directory: Path, params_file: str, variant: str | None = None, **extra):
    """Parse the experiment and its settings once, then work inside its folder (the platform's relative layout)."""
    from dkdm.console import Context, apply_runtime
    from dkdm.reproduce.params import ensure_tracking_experiment, experiment_settings, read_params

    directory = directory.resolve()
    params = read_params(directory, params_file)
    settings = experiment_settings(params, directory, variant, **extra)
    apply_runtime(settings)
    ensure_tracking_experiment(settings, directory)
    os.chdir(directory)
    return params, Context(settings=settings, profile_file=directory / params_file)


@app.command("stage")
@handles_errors
def stage_cmd(name: Annotated[str, typer.Argument(help="data | teacher | features | reference | heldout")],
              directory: DirOpt = Path("."), params_file: ParamsOpt = "params.yaml") -> None:
    """One of the platform's shared stages (one teacher for the whole grid), inside the experiment folder; heldout
    draws the FD' reference (teacher samples independent of the data-free training set D')."""
    from dkdm.reproduce.runs import run_shared_stage

    params, ctx = _enter(directory, params_file)
    run_shared_stage(ctx, name, heldout_seed=params.experiment.heldout_seed)


@app.command("teacher-eval")
@handles_errors
def teacher_eval_cmd(directory: DirOpt = Path("."), params_file: ParamsOpt = "params.yaml") -> None:
    """Score the teacher like a student, and the noise floor at the evaluation's sample count, per seed."""
    from dkdm.reproduce.runs import teacher_eval

    params, ctx = _enter(directory, params_file)
    teacher_eval(ctx, params)


@app.command("run-one")
@handles_errors
def run_one_cmd(variant: VariantOpt, seed: SeedOpt, directory: DirOpt = Path("."),
                params_file: ParamsOpt = "params.yaml") -> None:
    """Train one student of the grid (the shared budget, FD/FD' curve every train.eval_every); resumable."""
    from dkdm.reproduce.runs import train_one

    params, ctx = _enter(directory, params_file, variant, seed=seed)
    train_one(ctx, params, variant, seed)


@app.command("evaluate-one")
@handles_errors
def evaluate_one_cmd(variant: VariantOpt, seed: SeedOpt, directory: DirOpt = Path("."),
                     params_file: ParamsOpt = "params.yaml") -> None:
    """FD and FD' of one student at evaluate.num_samples."""
    from dkdm.reproduce.runs import evaluate_one

    params, ctx = _enter(directory, params_file, variant, seed=seed)
    evaluate_one(ctx, params, variant, seed)


@app.command("report")
@handles_errors
def report_cmd(directory: DirOpt = Path("."), params_file: ParamsOpt = "params.yaml") -> None:
    """Intervals, verdicts and figures -> outputs/report/, logged as an MLflow run (dkdm.stage=reproduce)."""
    from dkdm.reproduce.report import write_report

    params, ctx = _enter(directory, params_file)
    write_report(ctx, params)


@app.command("redraw")
@handles_errors
def redraw_cmd(results: Annotated[Path, typer.Argument(help="a report folder with results.csv and summary.json")],
               directory: DirOpt = Path("."), params_file: ParamsOpt = "params.yaml") -> None:
    """Redraw a report's score figures (scores.png, rho_sweep.png) in place from its results.csv and summary.json,
    without the grid's outputs/: e.g. a committed report in results/, after a change to the figures."""
    from dkdm.console import summary
    from dkdm.reproduce.params import experiment_settings, read_params
    from dkdm.reproduce.report import redraw_figures

    params = read_params(directory, params_file)
    settings = experiment_settings(params, directory.resolve())
    drawn = redraw_figures(results, params, settings.evaluate.num_samples)
    summary(f"reproduce redraw: {', '.join(str(path) for path in drawn)}")


@app.command("use")
@handles_errors
def use_cmd(name: Annotated[str, typer.Argument(help="variant of the definition: params-NAME.yaml (e.g. cifar10, ci)")],
            directory: DirOpt = Path(".")) -> None:
    """Make params-NAME.yaml the experiment's params.yaml (validated first, written atomically)."""
    from dkdm.console import summary
    from dkdm.profiles import atomic_write_text
    from dkdm.reproduce.params import PARAMS_FILE, PARAMS_VARIANT, read_params

    source = directory / PARAMS_VARIANT.format(name=name)
    if not source.is_file():
        found = sorted(p.stem.removeprefix("params-") for p in directory.glob("params-*.yaml"))
        raise DkdmError(f"use: no {source}; available: {', '.join(found) or 'none'}")
    read_params(directory, source.name)
    atomic_write_text(directory / PARAMS_FILE, source.read_text())
    summary(f"experiment params: {source.name} -> {directory / PARAMS_FILE}; run `dvc --cd {directory} repro`")


@app.command("run-all")
@handles_errors
def run_all_cmd(jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="processes at a time")] = 2,
                directory: DirOpt = Path("."), params_file: ParamsOpt = "params.yaml",
                dvc_commit: Annotated[bool, typer.Option(help="record the outputs in dvc.lock at the end")] = True,
                gpus: Annotated[str, typer.Option(help="GPU ids, e.g. '0,1,2,3': one command per GPU at a time "
                                                       "(sets --jobs)")] = "",
                ) -> None:
    """The grid of dvc.yaml, JOBS processes at a time (skips finished runs), then the report; then `dvc commit`
    records the outputs in dvc.lock when the folder is a DVC pipeline run on its params.yaml."""
    from dkdm.reproduce.parallel import run_all
    from dkdm.reproduce.params import read_params

    devices = [g.strip() for g in gpus.split(",") if g.strip()]
    if any(not g.isdigit() for g in devices) or len(set(devices)) != len(devices):
        raise DkdmError(f"--gpus: {gpus!r} is not a list of distinct GPU ids such as '0,1,2,3'")
    directory = directory.resolve()
    run_all(read_params(directory, params_file), directory, params_file, jobs, dvc_commit=dvc_commit,
            gpus=devices or None)
