"""The dashboard's data layer without Streamlit: source resolution, config diffs, run -> result records, the
paper-vs-ours arithmetic, and the guards that keep it from creating stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dkdm.dashboard_queries import compare as cmp
from dkdm.dashboard_queries.pipeline import pipeline_state
from dkdm.dashboard_queries.runs import config_diff, flatten_config, list_experiments, load_runs, resolve_sources
from dkdm.dashboard_queries.studies import (
    StorageMissingError,
    find_default_storage,
    open_storage,
    storage_exists,
    trial_run,
)
from dkdm.paper import paper_table


def run(run_id: str, stage: str, method: str | None, metrics: dict[str, float] | None = None,
        params: dict[str, str] | None = None, md5: str | None = None, **tags: str) -> dict:
    row = {"run_id": run_id, "run_name": run_id, "stage": stage, "method": method, "profile": "default",
           "dataset": "digits", "scale": tags.pop("scale", "cpu"), "teacher": "digits-teacher",
           "student": tags.pop("student", "digits-student"), "seed": tags.pop("seed", "0"),
           "start_time": pd.Timestamp("2025-01-01"), "parent_run_id": tags.pop("parent", None)}
    row.update(tags)
    row.update({f"metrics.{k}": v for k, v in (metrics or {}).items()})
    row.update({f"params.{k}": v for k, v in (params or {}).items()})
    if md5:
        row["tags.dkdm.dvc.student_md5"] = md5
    return row


def test_sources_precedence_and_absolute_sqlite(tmp_path: Path):
    env = {"DKDM_TRACKING__URI": "sqlite:///from-env.db", "DKDM_TUNE__STORAGE": "studies.journal"}
    from_env = resolve_sources(project_root=tmp_path, env=env)
    assert from_env.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'from-env.db'}"
    assert from_env.storage == str(tmp_path.resolve() / "studies.journal")
    assert from_env.experiment == "dkdm"
    explicit = resolve_sources("http://tracking:5000", "postgresql://db/optuna", "other", tmp_path, env)
    assert (explicit.tracking_uri, explicit.storage, explicit.experiment) == (
        "http://tracking:5000", "postgresql://db/optuna", "other")
    default = resolve_sources(project_root=tmp_path, env={})
    assert default.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" and default.storage is None


def test_missing_stores_are_reported_not_created(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert list_experiments(uri) == [] and load_runs(uri).empty
    assert not storage_exists(f"sqlite:///{tmp_path / 'optuna.db'}") and not storage_exists(None)
    with pytest.raises(StorageMissingError, match="no Optuna storage at"):
        open_storage(str(tmp_path / "optuna.journal"))
    assert find_default_storage(tmp_path) is None
    assert pipeline_state(tmp_path).has_dvc_yaml is False
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "optuna.db").write_bytes(b"")
    assert find_default_storage(tmp_path) == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"


def test_config_flatten_and_diff():
    left = flatten_config({"distill": {"method": "dynamic", "rho": 0.4, "channels": [1, 2]}, "seed": 0})
    right = flatten_config({"distill": {"method": "data_free", "rho": 0.4}, "seed": 0, "extra": True})
    assert left == {"distill.method": "dynamic", "distill.rho": "0.4", "distill.channels": "[1, 2]", "seed": "0"}
    diff = config_diff(left, right)
    assert diff.fillna("-").values.tolist() == [
        ["distill.channels", "[1, 2]", "-", "only left"],
        ["distill.method", "dynamic", "data_free", "changed"],
        ["extra", "-", "true", "only right"]]
    assert len(config_diff(left, right, only_changed=False)) == 5


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [
        run("t", "evaluate", "teacher", {"fd_digits": 13.0, "fd_digits_teacher": 1.4}),
        run("d0", "distill", "dynamic", {"train_seconds_per_100_iters": 10.0}, {"distill.rho": "0.4"}, md5="a"),
        run("e0", "evaluate", "dynamic", {"fd_digits": 13.5, "fd_digits_teacher": 2.0}, md5="a"),
        run("d1", "distill", "dynamic", None, {"distill.rho": "0.4"}, md5="b", seed="1"),
        run("e1", "evaluate", "dynamic", {"fd_digits": 13.7, "fd_digits_teacher": 3.0}, md5="b", seed="1"),
        run("r", "distill", "dynamic", {"fd_digits_teacher": 9.0}, {"distill.rho": "0.05"}, md5="c"),
        run("x", "distill", "iterative", {"fd_digits_teacher": 8.0},
            {"distill.rho": "0.4", "distill.discard_prob": "0.2"}, md5="d"),
        run("f", "evaluate", "data_free", {"fd_digits": 15.0, "fd_digits_teacher": 5.0}),
        run("p", "evaluate", "data_limited", {"fid": 11.0}, {"distill.data_fraction": "0.1"}, scale="paper",
            dataset="cifar10"),
        run("trial", "trial", "dynamic", {"fd_digits_teacher": 1.0}),
        run("rep", "reproduce", None, {"fd_digits_teacher": 1.0}),
    ]
    return pd.DataFrame(rows)


def test_result_records_merge_a_students_runs_and_skip_summaries(runs: pd.DataFrame):
    records = cmp.result_records(runs)
    assert sorted(records["run_ids"]) == ["d0,e0", "d1,e1", "f", "p", "r", "t", "x"]
    merged = records.set_index("run_ids").loc["d0,e0"]
    assert (merged["rho"], merged["fd_digits_teacher"], merged["train_seconds_per_100_iters"]) == (0.4, 2.0, 10.0)
    assert records.set_index("run_ids").loc["p", "paper_dataset"] == "CIFAR10-32"


def test_main_setting_keeps_the_papers_cell(runs: pd.DataFrame):
    main = cmp.main_setting(cmp.result_records(runs))
    assert sorted(main["run_ids"]) == ["d0,e0", "d1,e1", "f", "p", "t"]  # no rho 0.05 sweep, no discard run


def test_relative_comparison_ratios_and_ordering(runs: pd.DataFrame):
    rel = cmp.relative_comparison(cmp.result_records(runs), ["fd_digits", "fd_digits_teacher"])
    by_method = rel.set_index("method")
    assert list(rel["method"]) == ["teacher", "dynamic", "data_free"]
    assert by_method.loc["dynamic", "fd_digits_teacher"] == pytest.approx(2.5)  # mean of seeds 2.0 and 3.0
    assert by_method.loc["dynamic", "fd_digits_teacher ÷ data_free"] == pytest.approx(0.5)
    assert by_method.loc["teacher", "fd_digits ÷ data_free"] == pytest.approx(13.0 / 15.0)
    assert cmp.ordering(rel, "fd_digits_teacher") == "teacher (1.4) < dynamic (2.5) < data_free (5)"
    checks = cmp.claim_checks(rel, "fd_digits_teacher", paper_table("table2_main_pixel"),
                              paper_table("table11_fid_prime"))
    assert checks["agrees"].tolist() == [True, None, None, True]  # no shuffled/iterative/data-based main runs
    assert checks.loc[0, "paper"] == "CIFAR-10 FID 9.56 vs 12.06 (Table 2)"
    assert checks.loc[2, "ours"] == "fd_digits_teacher – vs 2.5"


def test_side_by_side_matches_data_limited_fraction(runs: pd.DataFrame):
    side = cmp.side_by_side(paper_table("table2_main_pixel"), cmp.result_records(runs), {"FID": "fid"})
    cell = side.loc[(side["method"] == "Data-Limited Training") & (side["dataset"] == "CIFAR10-32")
                    & np.isclose(side["real_data_fraction"], 0.1)]
    assert cell[["paper FID", "ours FID", "ours n"]].values.tolist() == [[11.06, 11.0, 1]]
    assert side["ours FID"].notna().sum() == 1


def test_cross_architecture_by_preset_family():
    rows = [run("a", "evaluate", "dynamic", {"fd_digits": 14.0, "fd_digits_teacher": 3.0}, student="tiny-dit"),
            run("b", "evaluate", "data_free", {"fd_digits": 16.0, "fd_digits_teacher": 6.0}, student="tiny-dit")]
    table = cmp.cross_architecture(cmp.result_records(pd.DataFrame(rows)), lambda name: None)
    assert table[["teacher", "student", "metric", "dkdm ÷ data_free"]].values.tolist() == [
        ["CNN", "ViT", "fd_digits", 14.0 / 16.0], ["CNN", "ViT", "fd_digits_teacher", 0.5]]


def test_trial_run_by_user_attr_or_tags():
    frame = pd.DataFrame([
        {**run("parent", "tune", None), "study": "s", "trial": None},
        {**run("t1", "trial", "dynamic", parent="parent"), "study": None, "trial": "1"},
        {**run("t2", "trial", "dynamic", parent="parent"), "study": None, "trial": "2"},
    ])
    assert trial_run(frame, "s", 2)["run_id"] == "t2"
    assert trial_run(frame, "s", 2, {"mlflow_run_id": "t1"})["run_id"] == "t1"
    assert trial_run(frame, "other", 2) is None


def test_a_runs_own_spec_wins_over_the_other_runs_of_its_profile():
    params = {"distill.rho": "0.4", "distill.runs.plain.discard_prob": "0.0",
              "distill.runs.discard.discard_prob": "0.3"}
    rows = [run("a", "evaluate", "iterative", {"fd_digits_teacher": 4.0}, params, **{"tags.dkdm.run": "discard"}),
            run("b", "evaluate", "iterative", {"fd_digits_teacher": 5.0}, params, **{"tags.dkdm.run": "plain"})]
    records = cmp.result_records(pd.DataFrame(rows)).set_index("run_ids")
    assert records.loc["a", ["rho", "discard_prob"]].tolist() == [0.4, 0.3]
    assert records.loc["b", ["rho", "discard_prob"]].tolist() == [0.4, 0.0]
