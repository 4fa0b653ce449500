"""The `ci` profile through `dvc repro` in a temporary copy of the repository: DVC outs, metrics, plots, the
MLflow runs (params, metrics, artifacts, lineage tags) and the registered students."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_helpers import repro_profile  # noqa: E402
from pipeline_helpers import run as _run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return repro_profile(tmp_path_factory.mktemp("e2e") / "repo", "ci")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ci_profile_dvc_repro_outs_and_metrics(pipeline):
    repo, dvc, repro = pipeline
    settings = yaml.safe_load((repo / "params.yaml").read_text())
    runs = list(settings["distill"]["runs"])
    assert runs == ["dynamic", "shuffled", "iterative", "data_free"]
    for path in ["outputs/data/dataset.npz", "outputs/teacher/teacher.safetensors", "outputs/teacher/teacher.json",
                 "outputs/features/classifier.safetensors", "outputs/features/real_stats.safetensors",
                 "outputs/reference/teacher_samples.safetensors", "outputs/pool/pool.safetensors",
                 "outputs/report/report.md", "outputs/report/summary.json"]:
        assert (repo / path).is_file(), path
    for run in runs:
        assert (repo / f"outputs/students/{run}/student.safetensors").is_file()
        metrics = json.loads((repo / f"outputs/evaluation/{run}/metrics.json").read_text())
        for key in ("fd_digits", "fd_digits_teacher", "precision_digits", "recall_digits", "peak_memory_mb",
                    "train_seconds_per_100_iters"):
            assert key in metrics and metrics[key] == metrics[key], f"{run}: {key}"  # present and not NaN
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {f"distill@{r}" for r in runs} | {f"evaluate@{r}" for r in runs} | {"data", "teacher", "features",
                                                                            "reference", "pool", "report"} <= set(lock)
    assert lock["pool"]["params"]["params.yaml"]["distill.rho"] == 0.2
    assert "distill.rho" not in lock["distill@shuffled"]["params"]["params.yaml"], \
        "the shuffled student must not rerun when rho (a pool setting) changes"

    shown = _run([dvc, "metrics", "show", "--json"], repo, 120)
    assert "fd_digits_noise_floor" in shown.stdout and "fd_digits_teacher" in shown.stdout
    plots = _run([dvc, "plots", "show", "--json"], repo, 300)
    assert "failed to load" not in plots.stderr.lower(), plots.stderr
    for run in runs:
        assert f"outputs/curves/{run}.csv" in plots.stdout and f"outputs/evaluation/{run}/grid.png" in plots.stdout
    status = _run([dvc, "status", "dvc.yaml"], repo, 120)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
    report = (repo / "outputs/report/report.md").read_text()
    assert "Noise floor" in report and "| dynamic |" in report and "| data_free |" in report
    # FD' is scored against a second teacher set (reference.heldout_seed), not D', which data_free trains on
    assert "a held-out set of 128 teacher samples (seed 1000)" in report
    assert "Noise floor of fd_digits_teacher" in report


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ci_profile_mlflow_runs_and_registry(pipeline):
    from mlflow import MlflowClient

    repo, _, _ = pipeline
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dkdm")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    by_stage: dict[str, list] = {}
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        by_stage.setdefault(run.data.tags["dkdm.stage"], []).append(run)
    assert {"teacher", "features", "reference", "pool", "distill", "train", "evaluate", "report"} <= set(by_stage)
    head = _run(["git", "rev-parse", "HEAD"], repo, 30).stdout.strip()
    dynamic = next(r for r in by_stage["distill"] if r.data.tags["dkdm.method"] == "dynamic")
    tags = dynamic.data.tags
    assert tags["dkdm.git_commit"] == head
    assert tags["dkdm.dvc_stage"] == "distill@dynamic"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    def locked(stage: str, path: str) -> str:
        return next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)

    assert tags["dkdm.dvc.teacher_md5"] == locked("teacher", "outputs/teacher")
    # The distill stage cannot know its own hash; evaluate back-fills it once dvc.lock holds it.
    assert tags["dkdm.dvc.student_md5"] == locked("distill@dynamic", "outputs/students/dynamic")
    assert dynamic.data.params["distill.rho"] == "0.2" and dynamic.data.params["train.iterations"] == "12"
    losses = client.get_metric_history(dynamic.info.run_id, "train/loss")
    assert [m.step for m in losses] == [4, 8, 12]
    assert any(k.startswith("system/") for k in dynamic.data.metrics), "system metrics were not recorded"
    artifacts = {a.path for a in client.list_artifacts(dynamic.info.run_id)}
    assert {"config", "student"} <= artifacts
    evaluation = next(r for r in by_stage["evaluate"] if r.data.tags.get("dkdm.run") == "dynamic")
    assert "fd_digits" in evaluation.data.metrics and "fd_digits_teacher" in evaluation.data.metrics
    assert "samples/grid.png" in {a.path for a in client.list_artifacts(evaluation.info.run_id, "samples")}
    report_run = by_stage["report"][0]
    assert "report/report.md" in {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    for method in ("dynamic", "shuffled", "iterative", "data_free"):
        versions = client.search_model_versions(f"name='dkdm-student-ci-{method}'")
        assert len(versions) == 1, method
        files = {a.path for a in client.list_artifacts(versions[0].run_id, "student")}
        assert files == {"student/student.safetensors", "student/student.json"}, files


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dashboard_pages_render_from_ci_store(pipeline):
    """Every dashboard page renders from the store the `ci` profile filled."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures_mlflow import render_dashboard_pages

    repo, _, _ = pipeline
    pages = render_dashboard_pages(f"sqlite:///{repo / 'mlflow.db'}", None, repo)
    explorer = pages["pages/run_explorer.py"]
    assert explorer["dataframes"], "the run explorer lists the ci runs"
    assert any(df.shape[0] >= 4 for df in explorer["dataframes"]), "at least the four ci students are listed"
    assert not pages["pages/pipeline.py"]["errors"], pages["pages/pipeline.py"]["errors"]
