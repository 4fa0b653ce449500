"""`dkdm tune`: Optuna studies over rho, the learning rate, the student width and (optionally) the method.

    dkdm tune --study NAME --n-trials N [--storage URL|PATH] [--profile NAME] [--pruner median|hyperband|none]
              [--method-choice] [--worker-index K] [--timeout S] [--total-trials M]
    dkdm tune --show NAME [--top K]
    python -m dkdm.tuning ...            (the same, without the `dkdm` entry point)

Each trial distils the profile's student for a fixed budget and is scored by FD' against the teacher's samples
(`fd_digits_teacher` offline, `fid_teacher` on Inception profiles), minimised by a seeded TPE sampler.
Intermediate FD' feeds the pruner. Running the command again on a study adds trials; several workers
(processes or hosts) on one storage share the study.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dkdm.command import context, handles_errors
from dkdm.errors import DkdmError
from dkdm.tuning.config import TuneSettings
from dkdm.tuning.study import TuneSummary, check_study_name, run_study, tune_settings

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["TuneSettings", "TuneSummary", "app", "best_trials_table", "run_study", "tune_settings"]


# --------------------------------------------------------------------------- --show


def best_trials_table(storage_spec: str, name: str, tune: TuneSettings, top: int = 10) -> Table:
    """A rich Table of the study's best complete trials (ascending value), with a caption of its state counts."""
    import optuna
    from rich.table import Table

    from dkdm.tuning.storage import is_url, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_url(storage_spec) and not Path(storage_spec).is_file():
        raise DkdmError(f"--show: no study storage at {storage_spec} (run `dkdm tune --study NAME` first)")
    storage = open_storage(storage_spec, tune)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage=storage)
        raise DkdmError(f"--show: no study {name!r} in {storage_spec}; studies: {', '.join(names) or 'none'}") from None
    trials = study.get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)[:top]
    metric = study.user_attrs.get("metric", "value")
    keys = sorted({k for t in done for k in t.params}, key=lambda k: (k != "method", k))
    keys = [k for k in keys if k != "method"]
    table = Table(title=f"study {name}: best {len(done)} of {len(trials)} trials by {metric} (lower is better)")
    for column in ("#", "trial", "value", "method", *keys, "student params", "min"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    for rank, trial in enumerate(done, 1):
        minutes = (trial.datetime_complete - trial.datetime_start).total_seconds() / 60 if trial.datetime_start else 0
        method = trial.params.get("method", trial.user_attrs.get("method", ""))
        size = trial.user_attrs.get("num_parameters")
        table.add_row(str(rank), str(trial.number), f"{trial.value:.4g}", str(method),
                      *[_fmt(trial.params.get(k)) for k in keys], f"{size:,}" if size else "", f"{minutes:.1f}")
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    table.caption = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) + f"; storage {storage_spec}"
    return table


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- CLI

app = typer.Typer(help="Optuna studies over rho, the learning rate, the student width (and the method).",
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.callback(invoke_without_command=True)
def tune_cmd(
    study: Annotated[
        Optional[str], typer.Option("--study", "-s", help="study name (created, or resumed if it exists)")
    ] = None,
    n_trials: Annotated[Optional[int], typer.Option("--n-trials", "-n", min=1, help="trials this worker runs")] = None,
    storage: Annotated[
        Optional[str], typer.Option(help="journal file path or database URL (default: tune.storage, optuna.journal)")
    ] = None,
    profile: Annotated[
        Optional[str], typer.Option("--profile", "-p", help="profile name or YAML file (default: params.yaml)")
    ] = None,
    pruner: Annotated[Optional[str], typer.Option(help="median | hyperband | none (default: tune.pruner)")] = None,
    method_choice: Annotated[
        Optional[bool], typer.Option("--method-choice/--no-method-choice", help="also search the distillation method")
    ] = None,
    iterations: Annotated[
        Optional[int], typer.Option(min=1, help="student steps per trial (default: tune.iterations)")
    ] = None,
    eval_every: Annotated[Optional[int], typer.Option(min=1, help="steps between intermediate FD' (pruning)")] = None,
    timeout: Annotated[
        Optional[float], typer.Option(min=1, help="stop starting trials after this many seconds")
    ] = None,
    total_trials: Annotated[
        Optional[int], typer.Option(min=1, help="stop once the study holds this many trials (all workers)")
    ] = None,
    worker_index: Annotated[
        int, typer.Option(min=0, help="K of parallel workers: TPE seed + K (give each worker its own)")
    ] = 0,
    teacher: Annotated[Optional[Path], typer.Option(help="teacher checkpoint (default: the pipeline's)")] = None,
    teacher_stats: Annotated[
        Optional[Path], typer.Option(help="FD' reference statistics (default: the pipeline's)")
    ] = None,
    classifier: Annotated[Optional[Path], typer.Option(help="digits feature network (default: the pipeline's)")] = None,
    show: Annotated[Optional[str], typer.Option("--show", help="print the best trials of study NAME and exit")] = None,
    top: Annotated[int, typer.Option(min=1, help="rows of --show")] = 10,
) -> None:
    """Run trials of an Optuna study (several workers may share one storage), or --show a study's best trials."""
    handles_errors(_tune_main)(
        study=study, n_trials=n_trials, storage=storage, profile=profile, pruner=pruner, method_choice=method_choice,
        iterations=iterations, eval_every=eval_every, timeout=timeout, total_trials=total_trials,
        worker_index=worker_index, teacher=teacher, teacher_stats=teacher_stats, classifier=classifier, show=show,
        top=top,
    )


def _tune_main(*, study: str | None, n_trials: int | None, storage: str | None, profile: str | None,
               pruner: str | None, method_choice: bool | None, iterations: int | None, eval_every: int | None,
               timeout: float | None, total_trials: int | None, worker_index: int, teacher: Path | None,
               teacher_stats: Path | None, classifier: Path | None, show: str | None, top: int) -> None:
    from dkdm.console import print_table, summary
    from dkdm.launch import launch_if_requested
    from dkdm.tuning.inputs import InputPaths
    from training.train.distributed import init_distributed, shutdown_distributed

    ctx = context(profile)
    tune = tune_settings(ctx.settings, storage=storage, pruner=pruner, method_choice=method_choice,
                         iterations=iterations, eval_every=eval_every)
    if show is not None:
        print_table(best_trials_table(tune.storage, show, tune, top=top))
        return
    if study is None:
        raise DkdmError("--study: give the study name (or --show NAME to print one)")
    check_study_name(study)
    if n_trials is None and total_trials is None and timeout is None:
        n_trials = 10
    paths = InputPaths().with_overrides(teacher=teacher, teacher_stats=teacher_stats, classifier=classifier)
    # The profile's world size, as for every heavy command: one job. Relaunched as `dkdm tune` even when started
    # as `python -m dkdm.tuning` (whose argv lacks the subcommand).
    argv = sys.argv[1:] if sys.argv[1:2] == ["tune"] else ["tune", *sys.argv[1:]]
    if launch_if_requested(ctx.settings.runtime, argv):
        return
    dist = init_distributed(ctx.device)
    try:
        result = run_study(ctx.settings, study_name=study, n_trials=n_trials, tune=tune, device=dist.device,
                           paths=paths, timeout=timeout, worker_index=worker_index, total_trials=total_trials,
                           ctx=dist)
    finally:
        shutdown_distributed(dist)
    if result is None:
        return
    print_table(best_trials_table(tune.storage, study, tune, top=min(top, 5)))
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.states.items()))
    best = (f"best trial {result.best_number}: {result.metric}={result.best_value:.4g} {result.best_params}"
            if result.best_number is not None else "no complete trial yet")
    registered = f"; registered version {result.registered_version}" if result.registered_version else ""
    summary(f"tune {study}: ran {result.ran} trials ({states} in the study); {best}{registered} "
            f"[{result.storage}, {ctx.elapsed():.0f}s]")
