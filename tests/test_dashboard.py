"""Every dashboard page under Streamlit's AppTest, against a fixture MLflow store, Optuna study and DVC project
built in tmp_path (tests/fixtures_mlflow.py), and against an empty project for the empty states."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_mlflow import STUDY, FixtureStore, build_fixture_store  # noqa: E402

pytest.importorskip("streamlit.testing.v1", reason="streamlit is a project dependency")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
PAGES = ["pages/paper_vs_ours.py", "pages/run_explorer.py", "pages/studies.py", "pages/pipeline.py"]
TIMEOUT_S = 180  # first run imports mlflow, optuna and plotly on a shared 2-core machine
DVC_YAML = """stages:
  data:
    cmd: echo digits > data.txt
    outs: [data.txt]
  distill:
    foreach: [dynamic, data_free]
    do:
      cmd: cat data.txt > student_${item}.txt
      deps: [data.txt]
      outs: ["student_${item}.txt"]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FixtureStore:
    return build_fixture_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    """A DVC project whose `data` stage ran and whose two `distill@…` stages never did."""
    root = tmp_path_factory.mktemp("project")
    (root / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    for args in (["init", "--no-scm", "-q"], ["repro", "-q", "data"]):
        subprocess.run([*dvc, *args], cwd=root, check=True, capture_output=True, timeout=120)
    return root


def app(monkeypatch, uri: str, storage: str | None, root: Path) -> AppTest:
    monkeypatch.setenv("DKDM_TRACKING__URI", uri)
    monkeypatch.setenv("DKDM_PROJECT_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if storage:
        monkeypatch.setenv("DKDM_TUNE__STORAGE", storage)
    else:
        monkeypatch.delenv("DKDM_TUNE__STORAGE", raising=False)
    monkeypatch.delenv("DKDM_TRACKING__EXPERIMENT", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(array) -> list:
    """A plotly trace array: plain JSON list, or plotly's typed-array form {dtype, bdata}."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def frames(at: AppTest) -> list:
    return [frame.value for frame in at.dataframe]


def frame_with(at: AppTest, *columns: str):
    """The first dataframe on the page that has all these columns."""
    return next(f for f in frames(at) if all(c in f.columns for c in columns))


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_paper_vs_ours(monkeypatch, store: FixtureStore, dvc_project: Path):
    at = open_page(app(monkeypatch, store.tracking_uri, store.storage, dvc_project), PAGES[0])
    assert len(at.tabs) == 8
    # Table 2: the paper's row beside our paper-scale CIFAR-10 runs, number for number.
    side = next(f for f in frames(at) if "ours FID" in f.columns and "paper FID" in f.columns and "paper IS" in f)
    dkdm = side.loc[(side["method"] == "DKDM (Dynamic Iterative Distillation)") & (side["dataset"] == "CIFAR10-32")]
    assert dkdm[["paper FID", "ours FID", "ours n"]].values.tolist() == [[9.56, 10.1, 1]]
    # Digits numbers never appear as FIDs: the only "ours FID" values are the paper-scale runs'.
    assert sorted(side["ours FID"].dropna()) == [10.1, 12.6]
    # CPU scale: labelled, and shown as ratios to data-free training beside the paper's ratios.
    assert "not CIFAR-10 FIDs" in texts(at.info)
    relative = next(f for f in frames(at) if "fd_digits_teacher ÷ data_free" in f.columns
                    and "paper CIFAR10-32 FID ÷ data-free" in f.columns and len(f) == 6)
    row = relative.set_index("method").loc["DKDM (Dynamic Iterative Distillation)"]
    assert row["fd_digits_teacher"] == "2.15 ± 0.071 (n=2)"  # mean ± sd over the two seeds
    # main setting only (rho 0.4, no discard): seeds 0/1 give 2.1/2.2 vs data-free 7.9/8.0; exact to float eps
    assert row["fd_digits_teacher ÷ data_free"] == pytest.approx(2.15 / 7.95, rel=1e-9)
    assert row["paper CIFAR10-32 FID ÷ data-free"] == pytest.approx(9.56 / 12.06, rel=1e-9)
    claims = next(f for f in frames(at) if "claim" in f.columns)
    assert claims.iloc[0]["agrees"] == "yes"  # dynamic beats data-free on FD' in the fixture
    assert "dynamic (2.15) < shuffled (3.45)" in texts(at.markdown)
    # The reproduction report is rendered from its artifact.
    assert "Reproduction at CPU scale" in texts(at.markdown)
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    assert any(t.startswith("Relative to data-free training") for t in titles)
    assert "Quality vs rho (lower is better)" in titles
    assert "fd_digits_teacher vs random-discard probability p" in titles
    assert "Paper: CIFAR-10 FID vs student parameters" in titles
    assert any(t.startswith("DKDM ÷ data-free training by teacher→student") for t in titles)


def test_run_explorer_filters_change_the_content(monkeypatch, store: FixtureStore, dvc_project: Path):
    at = open_page(app(monkeypatch, store.tracking_uri, store.storage, dvc_project), PAGES[1])
    runs = frame_with(at, "run_name", "stage", "start_time")
    assert len(runs) == 38
    loss = next(c for c in charts(at) if c["layout"]["title"]["text"] == "train/loss over training steps")
    assert len(loss["data"]) == 6
    assert len(at.get("image")) == 3  # the grids of the three newest evaluations
    at.multiselect(key="filter_method").set_value(["dynamic"]).run()
    runs = frame_with(at, "run_name", "stage", "start_time")
    # fixture: 2 seeds + 2 rho values + 1 DiT student (distill and evaluate each), 1 paper-scale run, 4 trials
    assert set(runs["method"]) == {"dynamic"} and len(runs) == 15
    at.multiselect(key="filter_student").set_value(["digits-dit-student"]).run()
    runs = frame_with(at, "run_name", "stage", "start_time")
    assert len(runs) == 2 and set(runs["student"]) == {"digits-dit-student"}
    assert "2 of 38 runs" in texts(at.caption)


def test_run_explorer_config_diff_and_metric_history(monkeypatch, store: FixtureStore, dvc_project: Path):
    at = open_page(app(monkeypatch, store.tracking_uri, store.storage, dvc_project), PAGES[1])
    at.multiselect(key="filter_stage").set_value(["distill", "train"]).run()
    dynamic, data_free = store.run_ids["dynamic/distill"], store.run_ids["data_free/distill"]
    at.selectbox(key="diff_left").set_value(dynamic)
    at.selectbox(key="diff_right").set_value(data_free).run()
    diff = frame_with(at, "key", "left", "right", "change").set_index("key")
    assert diff.loc["distill.method", ["left", "right", "change"]].tolist() == ["dynamic", "data_free", "changed"]
    assert "left from config/resolved.yaml, right from config/resolved.yaml" in texts(at.caption)
    at.selectbox(key="step_metric").set_value("eval/fd_digits_teacher").run()
    curve = next(c for c in charts(at) if c["layout"]["title"]["text"].startswith("eval/fd_digits_teacher"))
    assert len(curve["data"]) == 8  # the picker's default: the first 8 model runs with this metric
    assert values(curve["data"][0]["x"]) == [1000, 2000, 3000, 4000]  # 4 periodic evaluations per run


def test_studies(monkeypatch, store: FixtureStore, dvc_project: Path):
    at = open_page(app(monkeypatch, store.tracking_uri, store.storage, dvc_project), PAGES[2])
    summary = frame_with(at, "study", "complete", "pruned").set_index("study").loc[STUDY]
    assert summary[["trials", "complete", "pruned", "failed", "best trial"]].tolist() == [6, 4, 1, 1, 1]
    assert at.metric[0].value == "2.5"
    assert store.run_ids["trial/1"] in texts(at.markdown)  # the best trial's nested MLflow run
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    assert titles == ["Optimization History Plot", "Hyperparameter Importances"]
    assert len(frame_with(at, "number", "state", "params_rho")) == 6


def test_pipeline(monkeypatch, store: FixtureStore, dvc_project: Path):
    at = open_page(app(monkeypatch, store.tracking_uri, store.storage, dvc_project), PAGES[3])
    stages = frame_with(at, "stage", "status", "changes").set_index("stage")["status"].to_dict()
    assert stages == {"data": "up to date", "distill@dynamic": "never run", "distill@data_free": "never run"}
    assert [m.value for m in at.metric] == ["1", "0", "2"]
    outs = frame_with(at, "stage", "path", "md5")
    assert outs[["stage", "path", "exists"]].values.tolist() == [["data", "data.txt", True]]
    (dvc_project / "data.txt").write_text("changed\n", encoding="utf-8")
    at.button(key="refresh").click().run()  # "Refresh data" clears the cached DVC answer
    stages = frame_with(at, "stage", "status", "changes").set_index("stage")
    assert stages.loc["data", "status"] == "changed" and "data.txt (modified)" in stages.loc["data", "changes"]


def test_pipeline_shows_a_nested_dvc_project_separately(monkeypatch, store: FixtureStore, tmp_path: Path):
    # The layout of experiments/reproduce: its own DVC project (`dvc init --subdir`) below the root, which the
    # root's `dvc status` skips; the page lists its stages apart from the root's, never mixed into them.
    root = tmp_path / "project"
    (root / "experiment").mkdir(parents=True)
    (root / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    (root / "experiment" / "dvc.yaml").write_text("stages:\n  grid:\n    cmd: echo 1 > g.txt\n    outs: [g.txt]\n",
                                                  encoding="utf-8")
    dvc = str(Path(sys.executable).with_name("dvc"))
    for args, cwd in ((["git", "init", "-q"], root), ([dvc, "init", "-q"], root),
                      ([dvc, "init", "--subdir", "-q"], root / "experiment"), ([dvc, "repro", "-q", "data"], root)):
        subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=120)
    at = open_page(app(monkeypatch, store.tracking_uri, store.storage, root), PAGES[3])
    tables = [f for f in frames(at) if {"stage", "status"} <= set(f.columns)]
    assert [sorted(t["stage"]) for t in tables] == [["data", "distill@data_free", "distill@dynamic"], ["grid"]]
    assert tables[1]["status"].tolist() == ["never run"]
    assert "Other pipeline: `experiment/dvc.yaml`" in texts(at.subheader)
    assert [m.value for m in at.metric] == ["1", "0", "2", "0", "0", "1"]


def test_empty_project_shows_empty_states_and_creates_nothing(monkeypatch, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    at = app(monkeypatch, uri, None, tmp_path)
    info = texts(at.info)
    assert "No MLflow store" in info and "paper's tables are shown alone" in info
    assert len(frame_with(at, "method", "dataset", "IS", "FID", "sFID")) == 24  # the paper's Table 2 still renders
    open_page(at, PAGES[1])
    assert "No MLflow store" in texts(at.info) and not at.dataframe
    open_page(at, PAGES[2])
    assert "No Optuna storage configured" in texts(at.info)
    open_page(at, PAGES[3])
    assert "No `dvc.yaml`" in texts(at.info)
    assert list(tmp_path.iterdir()) == [], "the dashboard must not create stores"


def test_empty_experiment_and_broken_dvc_yaml(monkeypatch, tmp_path: Path, store: FixtureStore):
    (tmp_path / "dvc.yaml").write_text("stages:\n  a:\n    outs: - x\n", encoding="utf-8")
    monkeypatch.setenv("DKDM_TRACKING__EXPERIMENT", "no-such-experiment")
    monkeypatch.setenv("DKDM_TRACKING__URI", store.tracking_uri)
    monkeypatch.setenv("DKDM_PROJECT_ROOT", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "No runs in experiment `no-such-experiment` yet" in texts(at.info)
    open_page(at, PAGES[1])
    assert "No runs in experiment" in texts(at.info)
    open_page(at, PAGES[3])
    assert "DVC could not report the pipeline status" in texts(at.error)


def test_pages_never_write_to_mlflow(monkeypatch, store: FixtureStore, dvc_project: Path):
    db = Path(store.tracking_uri.removeprefix("sqlite:///"))
    artifacts = store.root / "artifacts"
    before = hashlib.sha256(db.read_bytes()).hexdigest(), sorted(p for p in artifacts.rglob("*"))
    at = app(monkeypatch, store.tracking_uri, store.storage, dvc_project)
    for page in PAGES:
        open_page(at, page)
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), sorted(artifacts.rglob("*"))) == before


def test_dashboard_command_line(tmp_path: Path):
    from dkdm.dashboard import dashboard_command, dashboard_env

    command = dashboard_command(8600, "127.0.0.1")
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("dashboards/app.py")
    assert command[command.index("--server.port") + 1] == "8600"
    env = dashboard_env("sqlite:///mlflow.db", "optuna.journal", project_root=tmp_path)
    assert env["DKDM_TRACKING__URI"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert env["DKDM_TUNE__STORAGE"] == str(tmp_path.resolve() / "optuna.journal")
    with pytest.raises(ValueError, match="port: 70000 is not a TCP port"):
        dashboard_command(70000)
