"""One MLflow run per training however often its process dies, and system metrics that outlive a server outage.

The whole path (SIGKILL of `dkdm distill`, resume) is tests/test_fault_injection.py; these are its parts.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dkdm.tracking import start_run
from dkdm.tracking_queue import DeliveryQueue
from dkdm.tracking_resume import PID_TAG, RUN_ID_KEY, STARTED_TAG
from dkdm.tracking_system import SystemSampler
from test_tracking import FlakyStore, _settings
from training.train.state import atomic_save_tensors

# The `project` and `server` fixtures are test_tracking's; registering it as a plugin is how pytest shares them.
pytest_plugins = ["test_tracking"]


def _client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _state(path: Path, run_id: str) -> Path:
    return atomic_save_tensors(path, {"x": torch.zeros(1)}, {"run": {RUN_ID_KEY: run_id}})


def test_a_run_left_running_by_a_dead_process_is_marked_killed_by_the_next_command(project):
    settings = _settings(system_metrics=False)
    with start_run(settings, stage="distill", run_name="alive") as tracker:
        alive = tracker.run_id
        client = _client(project)
        client.set_tag(alive, PID_TAG, str(_dead_pid()))  # as if its process had been killed -9
        with start_run(settings, stage="evaluate", run_name="next") as other:
            assert client.get_run(alive).info.status == "KILLED"
            assert client.get_run(other.run_id).info.status == "RUNNING"  # a live owner is left alone


def test_resume_state_reattaches_to_its_run_without_sending_a_step_twice(project):
    settings = _settings(system_metrics=False)
    with start_run(settings, stage="distill", run_name="student") as tracker:
        run_id = tracker.run_id
        for step in (4, 8):
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
    client = _client(project)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, PID_TAG, str(_dead_pid()))  # killed before it could end the run
    state = _state(project / "resume.safetensors", run_id)

    with start_run(settings.model_copy(update={"seed": 5}), stage="distill", run_name="student",
                   resume_state=state) as tracker:
        assert tracker.run_id == run_id
        for step in (4, 8, 12):  # a resumed trainer replays its history, then goes on
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dkdm.resumed"] == "1"
    assert run.data.tags[STARTED_TAG] != "" and run.data.params["seed"] == "0"  # params stay those it opened with
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [4, 8, 12]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_finished_or_unknown_run_in_the_state_opens_a_new_run(project):
    settings = _settings(system_metrics=False)
    with start_run(settings, stage="distill", run_name="done") as tracker:
        done = tracker.run_id
    for named in (done, "0123456789abcdef0123456789abcdef"):
        with start_run(settings, stage="distill", run_name="again",
                       resume_state=_state(project / "resume.safetensors", named)) as tracker:
            assert tracker.run_id != done


def test_system_samples_are_kept_through_an_outage_and_delivered_in_order():
    store = FlakyStore()
    queue = DeliveryQueue(store.deliver, retry_interval_s=0.1)

    class QueueTracker:
        def log_metrics(self, metrics, step):
            from dkdm.tracking_queue import Record

            queue.put(Record("metrics", [(k, v, 0, step) for k, v in metrics.items()]))

    sampler = SystemSampler(QueueTracker(), 0.1, first_step=7).start()
    time.sleep(0.35)
    store.down.set()
    time.sleep(0.5)
    store.down.clear()
    time.sleep(0.35)
    sampler.stop()
    assert queue.close(10) == []
    steps = sorted({m[3] for r in store.received for m in r.payload if m[0] == "system/cpu_utilization_percentage"})
    assert steps == list(range(7, 7 + len(steps))) and len(steps) >= 8, steps


@pytest.mark.slow
def test_system_metrics_go_on_after_a_server_outage(project, server):
    from mlflow import MlflowClient

    settings = _settings(uri=server.uri, system_metrics=True, system_metrics_interval_s=0.5, retry_interval_s=0.3,
                         flush_timeout_s=120)
    with start_run(settings, stage="distill", run_name="outage") as tracker:
        run_id = tracker.run_id
        time.sleep(2.0)
        server.stop()
        time.sleep(2.0)
        server.start()
        back = time.time() * 1000
        time.sleep(2.5)
    history = MlflowClient(server.uri).get_metric_history(run_id, "system/cpu_utilization_percentage")
    steps = sorted(m.step for m in history)
    assert steps == list(range(len(steps))), "a gap in the system metrics"
    after = [m for m in history if m.timestamp > back]
    assert len(after) >= 3, f"{len(after)} system samples after the server came back"
    assert MlflowClient(server.uri).get_run(run_id).info.status == "FINISHED"


def test_an_unavailable_system_sampler_is_reported_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A store error (e.g. SQLite's "table _alembic_tmp_metrics already exists" with its whole SQL statement) must not
    flood the stage's output: one warning line, and the run goes on without system metrics."""
    import dkdm.tracking_system as tracking_system

    def refuse(self: SystemSampler) -> SystemSampler:
        raise RuntimeError("(sqlite3.OperationalError) table _alembic_tmp_metrics already exists\n[SQL: \nCREATE TABLE"
                           " _alembic_tmp_metrics (\n\tkey VARCHAR(250) NOT NULL\n)]")

    monkeypatch.setattr(SystemSampler, "start", refuse)
    with caplog.at_level("WARNING", logger=tracking_system.__name__):
        assert tracking_system.start_sampler(object(), 5.0, {}) is None
    (record,) = [r for r in caplog.records if "system metrics unavailable" in r.getMessage()]
    assert record.getMessage() == ("tracking: system metrics unavailable ((sqlite3.OperationalError) table "
                                   "_alembic_tmp_metrics already exists)")
