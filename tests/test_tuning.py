"""`dkdm tune`: search space, a real study from the CLI (Optuna states, MLflow parent/child runs, registry,
resume, --show, optuna-dashboard), failures and pruning, two concurrent workers on one journal file, a killed
worker, and the prune decision under torchrun (2 gloo processes)."""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from dkdm.tuning.config import TuneSettings
from dkdm.tuning.space import SearchSpace, check_widths, width_choices
from tuning_helpers import (
    FAST_TUNE_ENV,
    input_flags,
    journal,
    load,
    make_inputs,
    start_worker,
    study_runs,
    worker_env,
    write_profile,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("tune-inputs"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A working directory with a profile, a tmp MLflow store and the fast trial budget in the environment."""
    monkeypatch.chdir(tmp_path)
    for key, value in FAST_TUNE_ENV.items():
        monkeypatch.setenv(key, value)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    profile = write_profile(tmp_path / "tunetest.yaml", uri)
    return {"root": tmp_path, "uri": uri, "profile": profile, "journal": tmp_path / "optuna.journal"}


def _cli(args: list[str]) -> Any:
    from dkdm.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


# --------------------------------------------------------------------------- search space


def test_width_choices_follow_each_family_constraint() -> None:
    # ADM UNet: GroupNorm has 32 groups and the digits presets use 32-channel heads: multiples of 32 only.
    assert width_choices("digits-student") == [32, 64]
    assert all(w % 32 == 0 for w in width_choices("cifar10-14M")) and 64 in width_choices("cifar10-14M")
    # DiT: hidden_size divisible by num_heads (2) and by 4 (sin-cos table), from half to twice the preset.
    assert width_choices("ci-student") == [16, 24, 32, 40, 48, 64]
    dit = width_choices("dit-19M")  # 6 heads
    assert 384 in dit and all(w % 6 == 0 and w % 4 == 0 and 192 <= w <= 768 for w in dit)
    with pytest.raises(ValueError, match="num_channels=48 cannot build 'digits-student'"):
        check_widths("digits-student", [32, 48])


def test_tune_settings_refuse_bad_ranges() -> None:
    with pytest.raises(ValueError, match="0 < low <= high"):
        TuneSettings(rho=(0.0, 1.0))
    with pytest.raises(ValueError, match="0 < low <= high"):
        TuneSettings(lr=(1e-3, 1e-4))
    with pytest.raises(ValueError, match="only distillation methods"):
        TuneSettings(methods=["dynamic", "data_free"])


def test_space_is_seeded_conditional_and_keeps_pools_non_empty() -> None:
    tune = TuneSettings(method_choice=True, rho=(0.001, 1.0))
    space = SearchSpace.build(tune, student="ci-student", default_method="dynamic", num_timesteps=50)
    assert space.rho == (1 / 50, 1.0)  # raised to 1/T: round(rho*T) >= 1 entry round
    assert space.methods == ("dynamic", "shuffled", "iterative") and space.width_key == "hidden_size"

    def draw(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))
        points = []
        for _ in range(6):
            trial = study.ask()
            point = space.suggest(trial).as_dict()
            points.append(point)
            study.tell(trial, point["lr"])
        return points

    first = draw(7)
    assert first == draw(7)  # same seed, same points
    assert first != draw(8)
    for point in first:
        assert ("rho" in point) == (point["method"] == "dynamic")
        assert 1e-5 <= point["lr"] <= 3e-3 and point["hidden_size"] in space.widths
    narrow = SearchSpace.build(TuneSettings(), student="ci-student", default_method="shuffled", num_timesteps=50)
    assert narrow.methods == ("shuffled",)
    with pytest.raises(ValueError, match="at least 1/T"):
        SearchSpace.build(TuneSettings(rho=(0.001, 0.005)), student="ci-student", default_method="dynamic",
                          num_timesteps=50)


# --------------------------------------------------------------------------- a real study from the CLI


def test_cli_study_tracks_trials_registers_best_resumes_and_shows(inputs: dict[str, Path],
                                                                 project: dict[str, Any]) -> None:
    args = ["tune", "--study", "cli", "--profile", str(project["profile"]), *input_flags(inputs)]
    result = _cli([*args, "--n-trials", "2", "--pruner", "none"])
    assert result.exit_code == 0, result.output
    assert "tune cli: ran 2 trials" in result.output

    study = load(journal(project["journal"]), "cli")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)
    assert study.user_attrs["metric"] == "fd_digits_teacher" and study.user_attrs["profile"] == "tunetest"
    for t in trials:
        assert math.isfinite(t.value) and t.value >= 0
        assert sorted(t.intermediate_values) == [2, 4]  # FD' at every eval_every=2 of the 4-step budget
        assert set(t.params) == {"lr", "hidden_size", "rho"}

    # MLflow: one parent run for the study, one nested run per trial carrying its number, state and values.
    parents, runs = study_runs(project["uri"], "cli")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["dkdm.stage"] == "tune" and parent.data.params["space.hidden_size"] == "16,24,32,40,48,64"
    assert parent.data.tags["dkdm.best_trial"] == str(study.best_trial.number)
    assert parent.data.metrics["best_fd_digits_teacher"] == pytest.approx(study.best_value)
    by_number = {int(r.data.tags["dkdm.trial"]): r for r in runs}
    assert sorted(by_number) == [0, 1]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=project["uri"])
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dkdm.trial_state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(run.data.params["lr"]) == pytest.approx(t.params["lr"])
        assert int(run.data.params["hidden_size"]) == t.params["hidden_size"]
        assert run.data.metrics["fd_digits_teacher"] == pytest.approx(t.value)
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/fd_digits_teacher")}
        assert history == pytest.approx(t.intermediate_values)
        assert "train/loss" in run.data.metrics

    # Registry: the best trial's student, as safetensors + JSON, no MLmodel (no pickled flavour).
    best = study.best_trial
    versions = client.search_model_versions("name='dkdm-student-tunetest-tuned'")
    assert len(versions) == 1 and versions[0].tags["dkdm.trial"] == str(best.number)
    assert versions[0].run_id == best.user_attrs["mlflow_run_id"]
    files = sorted(a.path for a in client.list_artifacts(versions[0].run_id, "student"))
    assert files == ["student/student.json", "student/student.safetensors"]
    kept = sorted(p.name for p in (project["root"] / "outputs" / "tune" / "cli").iterdir())
    assert kept == [f"trial-{best.number}"]  # beaten students are deleted

    # Resume: the same study gains trials, under the same parent run; the median pruner may now prune.
    again = _cli([*args, "--n-trials", "1"])
    assert again.exit_code == 0, again.output
    study = load(journal(project["journal"]), "cli")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    parents, runs = study_runs(project["uri"], "cli")
    assert len(parents) == 1 and len(runs) == 3
    for t in study.trials:
        run = next(r for r in runs if r.data.tags["dkdm.trial"] == str(t.number))
        assert run.data.tags["dkdm.trial_state"] == t.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]

    shown = _cli(["tune", "--show", "cli", "--profile", str(project["profile"])])
    assert shown.exit_code == 0, shown.output
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    rows = [line for line in shown.output.splitlines() if line.startswith("│")]
    assert len(rows) == len(complete)
    assert rows[0].split("│")[2].strip() == str(complete[0].number)
    assert rows[0].split("│")[3].strip() == f"{complete[0].value:.4g}"

    # optuna-dashboard serves the same storage: its WSGI app lists the study.
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(str(project["journal"]))
    environ: dict[str, Any] = {"PATH_INFO": "/api/studies"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *exc: status.append(s)))
    assert status[0].startswith("200")
    listed = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in listed] == ["cli"]


@pytest.mark.slow
def test_ci_profile_study_runs_after_the_pipeline_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged `ci` profile end to end: its stages make the inputs, then `dkdm tune --profile ci`."""
    monkeypatch.chdir(tmp_path)
    for key, value in {**FAST_TUNE_ENV, "DKDM_TRACKING__SYSTEM_METRICS": "false"}.items():
        monkeypatch.setenv(key, value)
    for stage in ("data", "teacher", "features", "reference"):
        done = _cli([stage, "--profile", "ci"])
        assert done.exit_code == 0, done.output
    result = _cli(["tune", "--study", "ci", "--n-trials", "3", "--profile", "ci"])
    assert result.exit_code == 0, result.output
    study = load(journal(tmp_path / "optuna.journal"), "ci")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.user_attrs["profile"] == "ci" and study.user_attrs["metric"] == "fd_digits_teacher"
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    parents, runs = study_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ci")
    assert len(parents) == 1 and len(runs) == 3


def test_cli_user_errors_are_one_line_exit_2(inputs: dict[str, Path], project: dict[str, Any]) -> None:
    profile = str(project["profile"])
    bad_name = _cli(["tune", "--study", "no spaces", "--profile", profile, *input_flags(inputs)])
    assert bad_name.exit_code == 2 and "--study: 'no spaces' is not a valid study name" in bad_name.output
    missing = _cli(["tune", "--study", "x", "--profile", profile, "--teacher", "nowhere.safetensors",
                    "--teacher-stats", str(inputs["teacher_stats"]), "--classifier", str(inputs["classifier"])])
    assert missing.exit_code == 2 and "teacher file nowhere.safetensors does not exist" in missing.output
    assert not project["journal"].exists()  # nothing written before the inputs were checked
    no_storage = _cli(["tune", "--show", "x", "--profile", profile])
    assert no_storage.exit_code == 2 and "no study storage at optuna.journal" in no_storage.output
    bad_pruner = _cli(["tune", "--study", "x", "--pruner", "sometimes", "--profile", profile, *input_flags(inputs)])
    assert bad_pruner.exit_code == 2 and "tune.pruner" in bad_pruner.output


def test_resuming_with_another_budget_is_refused(inputs: dict[str, Path], project: dict[str, Any]) -> None:
    args = ["tune", "--study", "fixed", "--profile", str(project["profile"]), *input_flags(inputs)]
    assert _cli([*args, "--n-trials", "1"]).exit_code == 0
    changed = _cli([*args, "--n-trials", "1", "--iterations", "6"])
    assert changed.exit_code == 2 and "study 'fixed' was made with budget" in changed.output
    shown = _cli(["tune", "--show", "nosuch", "--profile", str(project["profile"])])
    assert shown.exit_code == 2 and "no study 'nosuch'" in shown.output and "fixed" in shown.output


# --------------------------------------------------------------------------- failures, pruning, memory


class _ScriptedRunner:
    """A TrialRunner stand-in: per trial number, raise or return as scripted (no training)."""

    def __init__(self, script: dict[int, Any], metric: str = "fd_digits_teacher") -> None:
        from types import SimpleNamespace

        self.script = script
        self.inputs = SimpleNamespace(metric=metric)
        self.calls = 0

    def run(self, params: Any, *, report: Any, tracker: Any, save_dir: Path, provenance: dict[str, Any]) -> Any:
        from dkdm.tuning.objective import TrialOutcome, TrialPrunedAt

        number = provenance["trial"]
        self.calls += 1
        action = self.script.get(number, 1.0)
        if isinstance(action, Exception):
            raise action
        if action == "prune":
            report(2, 9.9)
            raise TrialPrunedAt(2)
        report(2, float(action) + 1)
        tracker.log_metrics({"fd_digits_teacher": float(action)}, 4)
        return TrialOutcome(float(action), 4, 0, {2: float(action) + 1})


def _lead(project: dict[str, Any], runner: Any, n_trials: int, **tune_values: Any) -> Any:
    from dkdm.settings import load_settings
    from dkdm.tuning.inputs import budget_for
    from dkdm.tuning.space import SearchSpace
    from dkdm.tuning.study import _lead_study

    settings = load_settings(project["profile"])
    tune = TuneSettings(storage=str(project["journal"]), register_best=False, **tune_values)
    space = SearchSpace.build(tune, student="ci-student", default_method="dynamic", num_timesteps=10)
    return _lead_study(settings, study_name="scripted", n_trials=n_trials, tune=tune, space=space,
                       budget=budget_for(settings, tune), runner=runner, method="dynamic", timeout=None,
                       worker_index=0, total_trials=None, announce=lambda n, p: None)


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(project: dict[str, Any]) -> None:
    from dkdm.tuning.objective import TrialFailure

    runner = _ScriptedRunner({1: TrialFailure("out of memory: CUDA out of memory"), 2: "prune", 3: 0.5})
    summary = _lead(project, runner, 4, pruner="none")
    assert summary.states == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1} and summary.best_number == 3
    study = load(journal(project["journal"]), "scripted")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert study.trials[1].user_attrs["fail_reason"] == "out of memory: CUDA out of memory"
    assert study.trials[2].user_attrs["pruned_at"] == 2
    _, runs = study_runs(project["uri"], "scripted")
    status = {int(r.data.tags["dkdm.trial"]): (r.data.tags["dkdm.trial_state"], r.info.status) for r in runs}
    assert status == {0: ("COMPLETE", "FINISHED"), 1: ("FAIL", "FAILED"), 2: ("PRUNED", "KILLED"),
                      3: ("COMPLETE", "FINISHED")}
    failed = next(r for r in runs if r.data.tags["dkdm.trial"] == "1")
    assert failed.data.tags["dkdm.fail_reason"] == "out of memory: CUDA out of memory"


def test_consecutive_failures_stop_the_worker_with_the_reason(project: dict[str, Any]) -> None:
    from dkdm.errors import DkdmError
    from dkdm.tuning.objective import TrialFailure

    runner = _ScriptedRunner({n: TrialFailure(f"non-finite loss in 4 of 4 steps (trial {n})") for n in range(10)})
    with pytest.raises(DkdmError, match=r"stopped after 2 failed trials in a row; last: non-finite loss .*trial 1"):
        _lead(project, runner, 10, max_consecutive_failures=2)
    assert runner.calls == 2
    assert [t.state.name for t in load(journal(project["journal"]), "scripted").trials] == ["FAIL", "FAIL"]


def _tiny_runner(inputs: dict[str, Path], project: dict[str, Any]) -> Any:
    from dkdm.settings import load_settings
    from dkdm.tuning.inputs import InputPaths, budget_for, load_inputs
    from dkdm.tuning.objective import TrialRunner
    from training.train.distributed import DistContext

    settings = load_settings(project["profile"])
    tune = TuneSettings(iterations=4, eval_every=2, eval_samples=16, final_samples=16)
    loaded = load_inputs(settings, tune, InputPaths(**inputs), torch.device("cpu"))
    return TrialRunner(loaded, budget_for(settings, tune), DistContext())


def test_non_finite_loss_fails_the_trial(inputs: dict[str, Path], project: dict[str, Any]) -> None:
    from dkdm.tuning.objective import TrialFailure
    from dkdm.tuning.space import TrialParams

    runner = _tiny_runner(inputs, project)
    with torch.no_grad():
        for p in runner.inputs.teacher.parameters():
            p.fill_(float("nan"))  # a diverged teacher: every target is NaN, every step is skipped
    params = TrialParams(method="shuffled", lr=1e-3, width=32, width_key="hidden_size")
    with pytest.raises(TrialFailure, match="non-finite loss in 4 of 4 steps"):
        runner.run(params)


def test_out_of_memory_fails_the_trial_and_releases_memory(inputs: dict[str, Path], project: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import weakref

    import training.distill
    from dkdm.tuning.objective import TrialFailure
    from dkdm.tuning.space import TrialParams

    runner = _tiny_runner(inputs, project)
    built: list[Any] = []
    real_build = training.distill.build_run

    def build_then_oom(config: Any, **kwargs: Any) -> Any:
        trainer = real_build(config, **kwargs)
        built.append(weakref.ref(trainer.model))

        def oom(*, until: int | None = None) -> Any:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        trainer.run = oom
        return trainer

    monkeypatch.setattr(training.distill, "build_run", build_then_oom)
    params = TrialParams(method="dynamic", lr=1e-3, width=64, width_key="hidden_size", rho=0.3)
    with pytest.raises(TrialFailure, match="out of memory: CUDA out of memory"):
        runner.run(params)
    gc.collect()
    assert built and built[0]() is None  # the student is gone once the failure is raised


def test_pruned_trial_stops_training_at_the_evaluation(inputs: dict[str, Path], project: dict[str, Any]) -> None:
    from dkdm.tuning.objective import TrialPrunedAt
    from dkdm.tuning.space import TrialParams
    from training.train.tracker import ListTracker

    runner = _tiny_runner(inputs, project)
    reported: list[tuple[int, float]] = []
    tracker = ListTracker()
    params = TrialParams(method="dynamic", lr=1e-3, width=32, width_key="hidden_size", rho=0.5)
    with pytest.raises(TrialPrunedAt) as pruned:
        runner.run(params, report=lambda step, value: reported.append((step, value)) or True, tracker=tracker)
    assert pruned.value.step == 2 and [s for s, _ in reported] == [2]
    assert tracker.series("eval/fd_digits_teacher") == [(2, pytest.approx(reported[0][1]))]
    finished = runner.run(params, report=lambda step, value: False)
    assert finished.steps == 4 and sorted(finished.intermediate) == [2, 4]
    assert finished.intermediate[2] == pytest.approx(reported[0][1], rel=1e-6)  # seeded: same trial, same FD'


# --------------------------------------------------------------------------- concurrent and dying workers


def test_two_concurrent_workers_share_one_journal_exactly(inputs: dict[str, Path], project: dict[str, Any]) -> None:
    args = ["--study", "pair", "--n-trials", "2", "--profile", str(project["profile"]), *input_flags(inputs)]
    env = worker_env()
    workers = [start_worker(project["root"], [*args, "--worker-index", str(k)], env) for k in (0, 1)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
    study = load(journal(project["journal"]), "pair")
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(4))  # 2 workers x 2 trials: none lost, none duplicated
    assert all(t.state.is_finished() for t in study.trials)
    assert {t.user_attrs["dkdm_worker"]["pid"] for t in study.trials} == {w.pid for w in workers}
    parents, runs = study_runs(project["uri"], "pair")
    assert len(parents) == 1  # the worker that created the study made the parent run; the other joined it
    assert sorted(int(r.data.tags["dkdm.trial"]) for r in runs) == numbers
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


def test_trial_of_a_killed_worker_is_failed_and_the_study_goes_on(inputs: dict[str, Path],
                                                                  project: dict[str, Any]) -> None:
    storage_path = project["journal"]
    args = ["--study", "killed", "--profile", str(project["profile"]), *input_flags(inputs)]
    worker = start_worker(project["root"], [*args, "--n-trials", "50"], worker_env())
    victim = None
    try:
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
            try:
                trials = load(journal(storage_path), "killed").trials if storage_path.exists() else []
            except KeyError:  # the study is not created yet
                trials = []
            running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if running:
                os.kill(worker.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the storage
                victim = running[0].number
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=60)
    assert victim is not None, "the worker never started a trial"

    result = _cli(["tune", *args, "--n-trials", "1"])
    assert result.exit_code == 0, result.output
    study = load(journal(storage_path), "killed")
    dead = study.trials[victim]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"] == f"worker pid {worker.pid} on {os.uname().nodename} died during the trial"
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert study.trials[-1].state.is_finished() and study.trials[-1].number > victim
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    _, runs = study_runs(project["uri"], "killed")
    dead_run = next(r for r in runs if r.data.tags["dkdm.trial"] == str(victim))
    assert dead_run.info.status == "FAILED" and dead_run.data.tags["dkdm.trial_state"] == "FAIL"


# --------------------------------------------------------------------------- torchrun: rank 0 decides, all ranks stop


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from dkdm.tuning.dist import announce, follow, leading
    from dkdm.tuning.objective import TrialPrunedAt, train_in_stretches
    from training.train.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world)
    record: dict[str, Any] = {"steps": {}, "params": {}}
    prune_from = {0: 99, 1: 4, 2: 2}  # trial number -> first step at which rank 0's pruner says prune

    def fake_trial(number: int, params: dict[str, Any], decide: Any) -> None:
        record["params"][number] = params
        reached = {"step": 0}

        def advance(until: int) -> int:
            reached["step"] = until
            record["steps"][number] = until
            return until

        train_in_stretches(ctx, [2, 4, 6], advance, lambda: decide(reached["step"]))

    try:
        if rank == 0:
            # Only rank 0 holds a study (storage traffic); the others never touch Optuna.
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

            def objective(trial: Any) -> float:
                params = {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True)}
                announce(ctx, trial.number, (trial.number, params))

                def decide(step: int) -> bool:
                    trial.report(float(step), step)
                    return step >= prune_from[trial.number]

                try:
                    fake_trial(trial.number, params, decide)
                except TrialPrunedAt as pruned:
                    raise optuna.TrialPruned() from pruned
                return 1.0

            with leading(ctx):
                study.optimize(objective, n_trials=3)
            record["states"] = {t.number: t.state.name for t in study.trials}
        else:
            record["seen"] = follow(ctx, lambda message: fake_trial(message[0], message[1], lambda step: False))
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


def test_prune_decision_of_rank_0_reaches_rank_1(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_dist_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["states"] == {"0": "COMPLETE", "1": "PRUNED", "2": "PRUNED"}
    assert rank1["seen"] == [[0, "COMPLETE"], [1, "PRUNED"], [2, "PRUNED"]]
    assert rank1["steps"] == rank0["steps"] == {"0": 6, "1": 4, "2": 2}  # both ranks stopped at the same step
    assert rank1["params"] == rank0["params"]  # the suggested parameters reached rank 1


@pytest.mark.parametrize("started_as", [["dkdm", "tune"], ["dkdm/tuning/__main__.py"]])
def test_a_profile_of_two_processes_relaunches_tune_as_one_job(started_as: list[str], inputs: dict[str, Path],
                                                               project: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`dkdm tune` (or `python -m dkdm.tuning`) with runtime.nproc_per_node 2 hands over to torch's launcher as
    `dkdm tune ...`, like every heavy command, instead of running trials in one process with per-rank batches."""
    import dkdm.launch

    launched: list[tuple[int, list[str]]] = []
    monkeypatch.setattr(dkdm.launch, "launch_if_requested",
                        lambda runtime, argv=None: launched.append((runtime.world_size, list(argv))) or True)
    monkeypatch.setenv("DKDM_RUNTIME__NPROC_PER_NODE", "2")
    args = ["--study", "pair", "--n-trials", "1", "--profile", str(project["profile"]), *input_flags(inputs)]
    monkeypatch.setattr("sys.argv", [*started_as, *args])
    result = _cli(["tune", *args])
    assert result.exit_code == 0, result.output
    assert launched == [(2, ["tune", *args])]
    assert not project["journal"].exists()  # the parent ran no trial itself
