"""The study loop of `dkdm tune`: open or resume the study, run this worker's trials, record them in MLflow.

Under torchrun only rank 0 opens the storage and MLflow; the other ranks follow its announcements
(dkdm.tuning.dist). A trial that fails (non-finite loss or FD', out of memory, a crash) is recorded as FAIL
with its reason and the study goes on; after `tune.max_consecutive_failures` failures in a row the worker stops.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkdm.errors import DkdmError
from dkdm.tuning.config import TuneSettings
from dkdm.tuning.storage import FAIL_REASON_ATTR, WORKER_ATTR

if TYPE_CHECKING:
    import torch
    from optuna import Study, Trial
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from dkdm.settings import Settings
    from dkdm.tuning.inputs import InputPaths
    from dkdm.tuning.objective import TrialBudget, TrialRunner
    from dkdm.tuning.space import SearchSpace, TrialParams
    from training.train.distributed import DistContext

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ENV_PREFIX = "DKDM_TUNE__"


@dataclass
class TuneSummary:
    study: str
    storage: str
    ran: int
    states: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    metric: str
    registered_version: str | None


def tune_settings(settings: Any, **overrides: Any) -> TuneSettings:
    """The profile's `tune:` section (defaults if the profile has none) with CLI overrides, validated."""
    from pydantic import ValidationError

    from dkdm.errors import one_line

    base = getattr(settings, "tune", None)
    values = base.model_dump() if base is not None else _env_tune_values()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TuneSettings(**values)
    except ValidationError as err:
        raise DkdmError(one_line(err, prefix="tune")) from None


def _env_tune_values() -> dict[str, Any]:
    """`DKDM_TUNE__<FIELD>` variables, for settings without a `tune` section (the same names Settings reads)."""
    values: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if key.upper().startswith(ENV_PREFIX):
            try:
                values[key[len(ENV_PREFIX):].lower()] = json.loads(raw)
            except json.JSONDecodeError:
                values[key[len(ENV_PREFIX):].lower()] = raw
    return values


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise DkdmError(f"--study: {name!r} is not a valid study name (letters, digits, '.', '_', '-'; at most 128)")
    return name


def make_pruner(tune: TuneSettings, iterations: int, eval_every: int) -> BasePruner:
    import optuna

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                           n_warmup_steps=tune.pruner_warmup_steps)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=iterations, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(tune: TuneSettings, worker_index: int) -> BaseSampler:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: a running trial counts as a bad result, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=tune.seed + worker_index, n_startup_trials=tune.sampler_startup_trials,
                                          constant_liar=True)


def open_study(name: str, storage: BaseStorage, *, sampler: BaseSampler, pruner: BasePruner,
               fixed: dict[str, Any]) -> tuple[Study, bool]:
    """Create the study, or load it and check it was made for the same profile, metric, budget and space.

    Creation is atomic in every storage, so among parallel workers exactly one sees `created`.
    """
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="minimize", load_if_exists=False)
        for key, value in fixed.items():
            study.set_user_attr(key, value)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise DkdmError(f"--study: study {name!r} exists and maximises; dkdm studies minimise FD'")
    stored = study.user_attrs
    for key, value in fixed.items():
        if key in stored and stored[key] != value:
            raise DkdmError(f"--study: study {name!r} was made with {key} {stored[key]!r}, this run has {value!r}; "
                            "use a new study name")
        if key not in stored:  # a worker that created it may still be writing its attributes
            study.set_user_attr(key, value)
    return study, False


class _FailureGuard:
    """Stops this worker after `limit` failed trials in a row: a systematic error should not burn the budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.last_reason = ""

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        if trial.state.name != "FAIL":
            self.streak = 0
            return
        self.streak += 1
        self.last_reason = str(trial.user_attrs.get(FAIL_REASON_ATTR, "see the log"))
        if self.streak >= self.limit:
            study.stop()

    @property
    def tripped(self) -> bool:
        return self.streak >= self.limit


def run_study(settings: Settings, *, study_name: str, n_trials: int | None, tune: TuneSettings,
              device: torch.device, paths: InputPaths | None = None, timeout: float | None = None,
              worker_index: int = 0, total_trials: int | None = None,
              ctx: DistContext | None = None) -> TuneSummary | None:
    """Run trials of one study on this worker; returns the summary on rank 0, None on the other ranks."""
    from dkdm.tuning.dist import announce, follow, leading
    from dkdm.tuning.inputs import InputPaths, budget_for, default_method, load_inputs, num_timesteps
    from dkdm.tuning.objective import TrialRunner
    from dkdm.tuning.space import SearchSpace
    from training.train.distributed import DistContext

    check_study_name(study_name)
    ctx = ctx or DistContext(device=device)
    budget = budget_for(settings, tune)
    method = default_method(settings)
    space = SearchSpace.build(tune, student=settings.distill.student, default_method=method,
                              num_timesteps=num_timesteps(settings))
    inputs = load_inputs(settings, tune, paths or InputPaths(), device)
    runner = TrialRunner(inputs, budget, ctx)
    if not ctx.is_main:
        follow(ctx, runner.run)
        return None
    with leading(ctx):
        return _lead_study(settings, study_name=study_name, n_trials=n_trials, tune=tune, space=space,
                           budget=budget, runner=runner, method=method, timeout=timeout, worker_index=worker_index,
                           total_trials=total_trials, announce=lambda n, p: announce(ctx, n, p))


def _lead_study(settings: Settings, *, study_name: str, n_trials: int | None, tune: TuneSettings,
                space: SearchSpace, budget: TrialBudget, runner: TrialRunner, method: str, timeout: float | None,
                worker_index: int, total_trials: int | None,
                announce: Callable[[int, TrialParams], None]) -> TuneSummary:
    import optuna

    from dkdm.tuning.objective import TrialFailure, TrialPrunedAt
    from dkdm.tuning.storage import fail_stale, open_storage, storage_label, worker_identity
    from dkdm.tuning.tracking import RUN_ID_ATTR, StudyTracking, best_trial, trial_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(tune.storage, tune)
    metric = runner.inputs.metric
    fixed = {
        "profile": settings.profile, "metric": metric, "student": settings.distill.student,
        "budget": f"{budget.iterations} iterations, FD' every {budget.eval_every} on {budget.eval_samples}, "
                  f"final on {budget.final_samples}",
        "space": space.describe(),
    }
    study, created = open_study(study_name, storage, sampler=make_sampler(tune, worker_index),
                                pruner=make_pruner(tune, budget.iterations, budget.eval_every), fixed=fixed)
    fail_stale(study)
    tracking = StudyTracking.open(
        settings, study_name, created=created, student=settings.distill.student, method=method,
        params={**space.describe(), "budget.iterations": budget.iterations, "budget.eval_every": budget.eval_every,
                "budget.eval_samples": budget.eval_samples, "budget.final_samples": budget.final_samples,
                "pruner": tune.pruner, "sampler": "TPE", "sampler.seed": tune.seed,
                "storage": storage_label(tune.storage)},
    )
    tracking.reconcile(study)
    me = worker_identity()

    def objective(trial: Trial) -> float:
        params = space.suggest(trial)
        trial.set_user_attr(WORKER_ATTR, me)
        trial.set_user_attr("method", params.method)
        tracker = tracking.start_trial(trial.number, {**params.as_dict(), "budget.iterations": budget.iterations},
                                       params.method)
        if getattr(tracker, "run_id", ""):
            trial.set_user_attr(RUN_ID_ATTR, tracker.run_id)
        announce(trial.number, params)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        provenance = {"study": study_name, "trial": trial.number, **params.as_dict()}
        try:
            outcome = runner.run(params, report=report, tracker=tracker,
                                 save_dir=trial_dir(tune.out_dir, study_name, trial.number), provenance=provenance)
        except TrialPrunedAt as pruned:
            trial.set_user_attr("pruned_at", pruned.step)
            tracking.end_trial(tracker, "PRUNED")
            raise optuna.TrialPruned(str(pruned)) from None
        except TrialFailure as failure:
            trial.set_user_attr(FAIL_REASON_ATTR, str(failure))
            tracking.end_trial(tracker, "FAIL", reason=str(failure))
            raise
        except BaseException as err:
            tracking.end_trial(tracker, "FAIL", reason=f"{type(err).__name__}: {err}")
            raise
        trial.set_user_attr("num_parameters", outcome.num_parameters)
        trial.set_user_attr("skipped_steps", outcome.skipped_steps)
        tracking.end_trial(tracker, "COMPLETE", value=outcome.value)
        return outcome.value

    guard = _FailureGuard(tune.max_consecutive_failures)
    callbacks: list[Any] = [guard]
    if total_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(total_trials, states=None))
    before = len(study.trials)
    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(TrialFailure,), callbacks=callbacks,
                   gc_after_trial=True)
    fail_stale(study)
    tracking.reconcile(study)
    version = tracking.register_best(study, tune.out_dir) if tune.register_best else None
    _drop_beaten_students(study, tune.out_dir, study_name)
    tracking.finish(study, metric)
    if guard.tripped:
        raise DkdmError(f"tune: stopped after {guard.streak} failed trials in a row; last: {guard.last_reason}")
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    best = best_trial(study)
    return TuneSummary(study=study_name, storage=storage_label(tune.storage), ran=len(study.trials) - before,
                       states=states, best_number=best.number if best else None,
                       best_value=best.value if best else None, best_params=dict(best.params) if best else {},
                       metric=metric, registered_version=version)


def _drop_beaten_students(study: Study, out_dir: Path, study_name: str) -> None:
    """Delete the students of complete trials that are not the best: a final value never changes, so a beaten
    trial can never become the best again (running trials are untouched)."""
    from dkdm.tuning.tracking import best_trial, trial_dir

    best = best_trial(study)
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and (best is None or trial.number != best.number):
            folder = trial_dir(out_dir, study_name, trial.number)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
