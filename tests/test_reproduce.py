"""The reproduction experiment: intervals, the verdict rule, aggregation and the report on synthetic numbers, and
(slow) the CI variant of experiments/reproduce run end to end through `dvc repro`."""
from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dkdm.cli import app
from dkdm.errors import DkdmError
from dkdm.reproduce.budgets import decide_all
from dkdm.reproduce.claims import Claim, paper_claims
from dkdm.reproduce.params import read_params
from dkdm.reproduce.stats import t_interval, welch_p
from reproduce_helpers import synthetic_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "experiments" / "reproduce"


# --------------------------------------------------------------------------- statistics


def test_t_interval_matches_hand_computation():
    iv = t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2 dof) = 4.302653: half width 4.302653 / sqrt(3) = 2.484138 (1e-5: table precision).
    assert iv.mean == pytest.approx(2.0)
    assert iv.sd == pytest.approx(1.0)
    assert iv.half_width == pytest.approx(2.484138, abs=1e-5)
    assert (iv.low, iv.high) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-5)
    assert iv.text() == "2 ± 2.48"


def test_t_interval_small_samples():
    single = t_interval([5.0])
    assert single.mean == 5.0 and single.n == 1 and math.isnan(single.low)
    assert single.text() == "5 (n=1)"
    empty = t_interval([float("nan")])
    assert empty.n == 0 and empty.text() == "n/a"
    assert t_interval([1.0, 2.0, 3.0], confidence=0.99).half_width > t_interval([1.0, 2.0, 3.0]).half_width


def test_welch_p():
    # t = -3 / sqrt(1/3 + 1/3) = -3.674, df = 4 (equal variances): two-sided p = 0.02131 (hand/table, 1e-4).
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.02131, abs=1e-4)
    assert math.isnan(welch_p([1.0], [4, 5, 6]))
    # Zero variance on both sides: equal means are a tie, different means as certain as it gets.
    assert welch_p([2, 2, 2], [2, 2, 2]) == 1.0
    assert welch_p([1, 1, 1], [2, 2, 2]) == 0.0


# --------------------------------------------------------------------------- verdict rule

CLAIM = Claim("k", "a beats b", "paper", "fd", (("a", "b"),))


def decide(claim: Claim, values: dict[str, list[float]], alpha: float):
    """The report's rule at a single point (the end), the claim its own Holm family."""
    return decide_all([claim], {claim.metric: {"end": values}}, ["end"], alpha)[0]


def test_decide_follows_the_stated_rule():
    assert decide(CLAIM, {"a": [1, 2, 3], "b": [4, 5, 6]}, 0.05).verdict == "reproduced"
    assert decide(CLAIM, {"a": [4, 5, 6], "b": [1, 2, 3]}, 0.05).verdict == "not reproduced"
    assert decide(CLAIM, {"a": [1, 2, 3], "b": [1.5, 2.5, 3.5]}, 0.05).verdict == "inconclusive"
    missing = decide(CLAIM, {"a": [1, 2, 3]}, 0.05)
    assert missing.verdict == "inconclusive" and missing.missing == ["b"]
    two = Claim("o", "a > b > c", "p", "fd", (("a", "b"), ("b", "c")))
    ordered = {"a": [1, 1.1, 0.9], "b": [5, 5.1, 4.9], "c": [9, 9.1, 8.9]}
    assert decide(two, ordered, 0.05).verdict == "reproduced"
    # One pair significant, the other a tie: not every listed comparison holds.
    assert decide(two, {**ordered, "c": [5, 5.1, 4.9]}, 0.05).verdict == "inconclusive"


def test_rho_claim_uses_extremes_and_rejects_reversals():
    claims = {c.key: c for c in paper_claims([(0.4, "r4"), (0.01, "r01"), (0.1, "r1")])}
    rho = claims["rho"]
    assert rho.pairs == (("r4", "r01"),)
    assert set(rho.reversals) == {("r1", "r01"), ("r4", "r1")}
    good = {"r01": [9, 9.2, 8.8], "r1": [5, 5.2, 4.8], "r4": [5.1, 4.9, 5.0]}
    assert decide(rho, good, 0.05).verdict == "reproduced"  # flattening after 0.1 is allowed
    worse_at_top = {"r01": [9, 9.2, 8.8], "r1": [3, 3.1, 2.9], "r4": [5.1, 4.9, 5.0]}
    assert decide(rho, worse_at_top, 0.05).verdict == "not reproduced"
    assert {c.key for c in paper_claims([])} == {"dynamic_vs_data_free", "variant_order", "fd_teacher_approaches",
                                                 "data_based_upper"}


# --------------------------------------------------------------------------- definition files


@pytest.mark.parametrize("name", ["params.yaml", "params-ci.yaml", "params-cifar10.yaml"])
def test_shipped_definitions_validate(name):
    params = read_params(EXPERIMENT, name)
    exp = params.experiment
    assert "dynamic" in exp.variants and len(exp.seeds) >= 2
    if name != "params-ci.yaml":
        assert len(exp.seeds) >= 5 and set(exp.variants) >= {"dynamic", "shuffled", "iterative", "data_free",
                                                               "data_based", "dit_dynamic", "dit_data_free",
                                                               "pool_k25", "pool_k10"}
        assert {exp.variant_specs[v].rho for v in exp.rho_sweep} >= {0.05, 0.1, 0.4}
        assert exp.variant_specs["pool_k10"].settings == {"distill": {"pool_prep": {"procedure": "respaced",
                                                                                    "steps": 10}}}
        train = params.settings["distill"]["train"]
        # every budget falls on a curve point: the verdicts compare at recorded steps
        assert all((b * train["iterations"]) % train["eval_every"] == 0 for b in exp.budgets)
    if name == "params.yaml":
        assert train["iterations"] == 800 and train["eval_every"] * 8 == train["iterations"]  # 8 curve points
    if name == "params-cifar10.yaml":
        assert params.settings["distill"]["train"]["select_metric"] == "fid_teacher"  # Table 2's best FID'


def test_a_variant_brings_its_own_settings(tmp_path):
    """The DiT pair trains another student through its own settings; everything else stays the experiment's."""
    from dkdm.reproduce.params import distill_config, experiment_settings

    params = read_params(EXPERIMENT, "params.yaml")
    base = experiment_settings(params, EXPERIMENT, tracking={"enabled": False})
    dit = experiment_settings(params, EXPERIMENT, "dit_dynamic", tracking={"enabled": False})
    assert (base.distill.student, dit.distill.student) == ("digits-student", "digits-dit-student")
    assert dit.distill.train == base.distill.train
    config = distill_config(dit, params.experiment.variant_specs["dit_dynamic"], 3)
    assert (config.method, config.rho, config.seed, config.iterations) == ("dynamic", 0.4, 3, 800)
    assert not config.random_flip  # digits: never flipped
    # an override the run's config cannot carry is refused, not silently dropped
    stray = params.experiment.variant_specs["dit_dynamic"].model_copy(update={"settings": {"distill": {"runs": {}}}})
    with pytest.raises(DkdmError, match="distill.runs does not reach the training config"):
        distill_config(dit, stray, 0)


def test_bad_definition_is_one_line(tmp_path):
    text = (EXPERIMENT / "params-ci.yaml").read_text().replace("rho_sweep: [rho_0p1, dynamic]",
                                                                "rho_sweep: [rho_0p1, nope]")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(DkdmError, match="variant 'nope' has no entry"):
        read_params(tmp_path)
    (tmp_path / "params.yaml").write_text(text.replace("rho_0p1, nope", "rho_0p1, dynamic").replace(
        "data_free:  {method: data_free}", "data_free:  {method: data_free, rho: 0.2}"))
    with pytest.raises(DkdmError, match="rho only applies to method 'dynamic'"):
        read_params(tmp_path)


def test_cli_rejects_unknown_variant(tmp_path, monkeypatch):
    shutil.copy(EXPERIMENT / "params-ci.yaml", tmp_path / "params.yaml")
    text = (tmp_path / "params.yaml").read_text().replace("../../platform/dkdm/configs/ci.yaml", "ci")
    (tmp_path / "params.yaml").write_text(text)
    monkeypatch.setenv("DKDM_TRACKING__URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["reproduce", "run-one", "--variant", "nope", "--seed", "0", "--dir",
                                      str(tmp_path)])
    assert result.exit_code == 2
    assert "--variant: 'nope' is not in experiment.variant_specs" in result.output


def test_heldout_reference_must_not_reuse_the_training_sets_seed(tmp_path, monkeypatch):
    text = (EXPERIMENT / "params-ci.yaml").read_text().replace("../../platform/dkdm/configs/ci.yaml", "ci")
    (tmp_path / "params.yaml").write_text(text.replace("heldout_seed: 1000", "heldout_seed: 1"))
    monkeypatch.setenv("DKDM_TRACKING__URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["reproduce", "stage", "heldout", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "experiment.heldout_seed: 1 is reference.seed" in result.output
    assert not (tmp_path / "outputs" / "heldout").exists()


_EXCLUSIVE_GPU = """
import os, sys, time
marker = os.path.join(sys.argv[1], "gpu-" + os.environ["CUDA_VISIBLE_DEVICES"] + ".busy")
fd = os.open(marker, os.O_CREAT | os.O_EXCL)  # fails if another command holds this GPU now
time.sleep(0.3)
os.close(fd)
os.remove(marker)
"""


def test_run_all_slots_give_each_command_its_own_gpu(tmp_path):
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from dkdm.reproduce.parallel import Slots

    slots, log = Slots(4, ["3", "5"]), tmp_path / "run-all.log"
    cmd = [sys.executable, "-c", _EXCLUSIVE_GPU, str(tmp_path)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(slots.run, log, cmd, cmd) for _ in range(4)]:
            future.result()  # a command that found its GPU busy exits 1, and run() raises
    used = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("$ ")]
    assert len(used) == 8 and set(used) == {"CUDA_VISIBLE_DEVICES=3", "CUDA_VISIBLE_DEVICES=5"}


@pytest.mark.parametrize("gpus", ["0,x", "1,1"])
def test_run_all_rejects_bad_gpu_lists(tmp_path, gpus):
    result = CliRunner().invoke(app, ["reproduce", "run-all", "--gpus", gpus, "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "--gpus:" in result.output and "distinct GPU ids" in result.output


# --------------------------------------------------------------------------- aggregation and report


def test_report_on_synthetic_grid(tmp_path, monkeypatch):
    from dkdm.console import Context
    from dkdm.reproduce.params import experiment_settings
    from dkdm.reproduce.report import write_report

    params = synthetic_experiment(tmp_path)
    settings = experiment_settings(params, tmp_path, tracking={"enabled": False})
    monkeypatch.chdir(tmp_path)
    data = write_report(Context(settings=settings, profile_file=tmp_path / "params.yaml"), params)

    verdicts = {k: v["verdict"] for k, v in data["verdicts"].items()}
    assert verdicts == {"dynamic_vs_data_free": "reproduced", "variant_order": "inconclusive", "rho": "reproduced",
                        "fd_teacher_approaches": "reproduced", "data_based_upper": "reproduced",
                        "any_architecture": "inconclusive"}
    # the curves halve from the 1/2 budget (step 4) to the end: significant from the first budget on, and staying
    assert data["verdicts"]["dynamic_vs_data_free"]["first_budget"] == {"dynamic<data_free": "1/2"}
    assert data["verdicts"]["dynamic_vs_data_free"]["stays"] == {"dynamic<data_free": True}
    assert data["variants"]["dynamic"]["fd"] == pytest.approx(3.0)
    assert data["teacher"]["fd_digits_noise_floor"] == pytest.approx(0.3)
    assert data["teacher"]["fd_digits_teacher_noise_floor"] == pytest.approx(0.5)
    report = (tmp_path / "outputs" / "report" / "report.md").read_text()
    assert report.count("| **reproduced**") == 4 and report.count("| **inconclusive**") == 2
    assert "missing: iterative, shuffled" in report and "missing: dit_data_free, dit_dynamic" in report
    # each metric's floor in its own column
    assert "the held-out reference) | — | — | 2 | 0.3 ± 0 | 0.5 ± 0 | — |" in report
    # both sides constant over seeds? no: the student jitters by +-0.005, so the bootstrap interval is narrow
    assert "Student/teacher fd_digits_teacher ratio (dynamic): 2.00 [1.99, 2.01]" in report
    assert "| dynamic | 6 ± 0 | 3 ± 0.0635 | 1.45 ± 0 |" in report  # fd at 1/2 and end, mean log fd (ln 6 + ln 3)/2
    assert "What changed from the first CPU report" in report
    assert "no (-67%)" in report  # curves halve/third over the last quarter: not flat
    for figure in ("fd_curves.png", "scores.png", "rho_sweep.png"):
        assert (tmp_path / "outputs" / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "outputs" / "report" / "results.csv").read_text().splitlines()
    assert rows[0] == "variant,method,rho,seed,fd_digits,fd_digits_teacher" and len(rows) == 1 + 8


def test_redraw_rebuilds_the_score_figures_from_a_committed_report(tmp_path, monkeypatch):
    from dkdm.console import Context
    from dkdm.reproduce.aggregate import collect, published_results
    from dkdm.reproduce.params import experiment_settings
    from dkdm.reproduce.report import write_report

    params = synthetic_experiment(tmp_path)
    settings = experiment_settings(params, tmp_path, tracking={"enabled": False})
    monkeypatch.chdir(tmp_path)
    write_report(Context(settings=settings, profile_file=tmp_path / "params.yaml"), params)
    report = tmp_path / "outputs" / "report"
    collected = collect(params, tmp_path, settings.distill.rho)
    published = published_results(report, params, collected.num_samples)
    assert list(published.variants) == list(collected.variants)
    for name, want in collected.variants.items():
        got = published.variants[name]
        assert (got.label, got.method, got.rho, got.seeds) == (want.label, want.method, want.rho, want.seeds)
        # results.csv keeps 6 significant digits
        assert got.fd == pytest.approx(want.fd, rel=1e-5) and got.fd_teacher == pytest.approx(want.fd_teacher, rel=1e-5)
    for key, values in collected.teacher.items():
        assert published.teacher[key] == [pytest.approx(sum(values) / len(values))]

    shutil.rmtree(tmp_path / "outputs" / "evaluation")  # a committed report has no outputs/ beside it
    (report / "scores.png").unlink()
    result = CliRunner().invoke(app, ["reproduce", "redraw", str(report), "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (report / "scores.png").read_bytes()[:4] == b"\x89PNG" and "scores.png" in result.stdout
    missing = CliRunner().invoke(app, ["reproduce", "redraw", str(tmp_path), "--dir", str(tmp_path)])
    assert missing.exit_code == 2 and "results.csv does not exist" in missing.stderr


def test_scores_figure_uses_a_log_axis_one_set_of_labels_and_a_legend_outside(tmp_path, monkeypatch):
    from dkdm.reproduce import plots
    from dkdm.reproduce.aggregate import collect

    params = synthetic_experiment(tmp_path)
    results = collect(params, tmp_path, 0.4)
    results.variants["data_free"].fd = [35.0, 50.0, 70.0]  # the outlier of the committed CPU run
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    plots.scores(results, tmp_path / "scores.png", list(results.variants), 0.95)

    fig = drawn[0]
    fig.canvas.draw()
    left, right = fig.axes[0], fig.axes[1]
    assert left.get_xscale() == right.get_xscale() == "log"
    assert left.get_xlim()[1] > 70 and left.get_xlim()[0] < 2.0  # the outlier and the best both inside
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert labels == [results.variants[v].label for v in results.variants]
    assert not any(t.get_visible() for t in right.get_yticklabels())  # one shared set of labels
    legend = fig.legends[0].get_window_extent()
    for ax in (left, right):
        assert legend.y1 <= ax.get_window_extent().y0  # below the panels: no data under it
    assert not left.get_legend() and not right.get_legend()


# --------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ci_variant_runs_through_dvc_repro(tmp_path):
    """The tiny variant of the definition through `dvc repro` in a fresh repository (~3 minutes on 2 idle cores)."""
    root = tmp_path / "repo"
    target = root / "experiments" / "reproduce"
    target.mkdir(parents=True)
    shutil.copy(EXPERIMENT / "dvc.yaml", target / "dvc.yaml")
    text = (EXPERIMENT / "params-ci.yaml").read_text()
    from dkdm.settings import DistillSettings

    pool_prep = "pool_prep" in DistillSettings.model_fields  # the pool-preparation setting (issue 18), once merged
    if pool_prep:
        text = text.replace("variants: [dynamic, data_free, dit_dynamic, dit_data_free]",
                            "variants: [dynamic, data_free, dit_dynamic, dit_data_free, pool_k10]")
    (target / "params.yaml").write_text(text)
    shutil.copytree(EXPERIMENT / ".dvc", target / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    # dvc.yaml calls `dkdm` from PATH (the active venv) and params name ../../platform/dkdm/configs/ci.yaml.
    (root / "platform").symlink_to(REPO / "platform")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DKDM_TRACKING__URI": f"sqlite:///{root / 'mlflow.db'}",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = str(bin_dir / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True, env=env)
    done = subprocess.run([dvc, "--cd", "experiments/reproduce", "repro"], cwd=root, env=env,  # the README's command
                          capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = (target / "outputs" / "report" / "report.md").read_text()
    summary = json.loads((target / "outputs" / "report" / "summary.json").read_text())
    # one verdict line per claim: the paper's 5, the DiT pair, and one per cheaper pool
    assert set(summary["verdicts"]) >= {"dynamic_vs_data_free", "any_architecture"}
    assert len(summary["verdicts"]) == 6 + pool_prep
    assert "## Verdicts" in report and "## Scores at finite budgets" in report
    # params-ci.yaml does not run the rho point it names: reported missing.
    assert summary["missing"] == ["rho_0p1-s0", "rho_0p1-s1"] and summary["variants"]["dynamic"]["n"] == 2
    assert summary["verdicts"]["rho"]["verdict"] == "inconclusive"
    assert summary["verdicts"]["any_architecture"]["first_budget"].keys() == {"dit_dynamic<dit_data_free"}
    assert math.isfinite(summary["teacher"]["fd_digits_noise_floor"])
    assert math.isfinite(summary["teacher"]["fd_digits_teacher_noise_floor"])
    # The DiT pair trained the DiT student, the others the profile's.
    students = {v: json.loads((target / "outputs" / "students" / f"{v}-s0" / "run.json").read_text())["student"]
                for v in ("dynamic", "dit_data_free")}
    assert students == {"dynamic": "ci-student", "dit_data_free": "digits-dit-student"}
    # D' (the data-free training set) and the FD' reference are two independent teacher sets: own seeds, no sample
    # in common.
    from training.distill.baselines import load_synthetic

    info = json.loads((target / "outputs" / "heldout" / "info.json").read_text())
    assert (info["seed"], info["training_set_seed"]) == (1000, 1)
    train_set = load_synthetic(target / "outputs" / "reference" / "teacher_samples.safetensors")
    heldout = load_synthetic(target / "outputs" / "heldout" / "teacher_samples.safetensors")
    assert train_set.shape == heldout.shape
    assert not (train_set.flatten(1)[:, None] == heldout.flatten(1)[None]).all(-1).any()
    lock = (target / "dvc.lock").read_text()
    assert "student@data_free-1" in lock and "evaluate@dynamic-1" in lock and "report:" in lock
    assert "heldout:" in lock
    with sqlite3.connect(root / "mlflow.db") as db:
        stages = dict(db.execute("select value, count(*) from tags where key='dkdm.stage' group by value").fetchall())
        scale = db.execute("select t.value from tags t join tags s on t.run_uuid = s.run_uuid where "
                           "s.key='dkdm.stage' and s.value='reproduce' and t.key='dkdm.scale'").fetchall()
    assert stages["reproduce"] == 1 and stages["distill"] == 4 + 2 * pool_prep and stages["train"] == 4
    assert scale == [("cpu",)]

    # run-all on the same folder: it reruns only what is missing (one evaluation, the report) and commits to DVC,
    # after which DVC finds nothing to do.
    shutil.rmtree(target / "outputs" / "evaluation" / "dynamic-s1")
    done = subprocess.run([sys.executable, "-m", "dkdm", "reproduce", "run-all", "-j", "2",
                           "--dir", str(target)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "outputs committed to DVC" in done.stdout
    ran = [line.split(" -m ", 1)[1].split(" --dir")[0] for line in
           (target / "outputs" / "run-all.log").read_text().splitlines() if line.startswith("$ ")]
    assert ran == ["dkdm reproduce evaluate-one --variant dynamic --seed 1", "dkdm reproduce report",
                   "dvc commit --force --quiet dvc.yaml"]
    status = subprocess.run([dvc, "--cd", "experiments/reproduce", "status"], cwd=root, env=env,
                            capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout, status.stdout
    # The experiment folder is a DVC project of its own: the root's `dvc status` never lists its stages.
    (target / "outputs" / "report" / "report.md").unlink()
    root_status = subprocess.run([dvc, "status"], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert "report" not in root_status.stdout and "changed" not in root_status.stdout, root_status.stdout


def test_curve_survives_a_resume(tmp_path, monkeypatch):
    """A resumed student keeps the curve points it had before the resume step and redoes the later ones."""
    from types import SimpleNamespace as NS

    import numpy as np

    import training.eval.evaluate as evaluate
    from dkdm.reproduce import runs
    from training.eval.extractor import DIGITS_METRICS

    extractor = NS(metric_names=DIGITS_METRICS, space="digits", extract=lambda samples, batch_size: None)
    monkeypatch.setattr(runs, "_scorer", lambda ctx: (extractor, None, None))
    monkeypatch.setattr(runs, "make_diffusion", lambda *a, **k: None)
    monkeypatch.setattr(runs, "_sample", lambda *a, **k: np.zeros((2, 8, 8, 1), np.uint8))
    scores = iter([{"fd_digits": 5.0, "fd_digits_teacher": 1.0}, {"fd_digits": 4.0, "fd_digits_teacher": 0.5}])
    monkeypatch.setattr(evaluate, "evaluate_features", lambda *a, **k: next(scores))
    path = tmp_path / "curve.csv"
    path.write_text("step,fd,fd_teacher\n200,9,3\n400,8,2\n600,7,1.5\n")
    settings = NS(distill=NS(eval_samples=2), evaluate=NS(seed=0, use_ddim=False, respacing="5"),
                  features=NS(batch_size=2))
    recorder = runs.CurveRecorder(NS(settings=settings), path)
    assert recorder(600, None) == {"fd_digits": 5.0, "fd_digits_teacher": 1.0}  # resumed at 400: 600 is redone
    recorder(800, None)
    assert path.read_text().splitlines() == ["step,fd,fd_teacher", "200,9,3", "400,8,2", "600,5,1", "800,4,0.5"]


def test_new_tracking_experiment_keeps_artifacts_at_the_repo_root(tmp_path, monkeypatch):
    """Commands run inside the experiment folder; a fresh store must not put its artifact root there."""
    from mlflow import MlflowClient

    from dkdm.reproduce.params import ensure_tracking_experiment, experiment_settings

    (tmp_path / ".dvc").mkdir()
    folder = tmp_path / "experiments" / "reproduce"
    folder.mkdir(parents=True)
    text = (EXPERIMENT / "params-ci.yaml").read_text().replace("../../platform/dkdm/configs/ci.yaml", "ci")
    (folder / "params.yaml").write_text(text)
    monkeypatch.delenv("DKDM_TRACKING__URI", raising=False)
    monkeypatch.chdir(folder)
    settings = experiment_settings(read_params(folder), folder)
    assert settings.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_tracking_experiment(settings, folder)
    found = MlflowClient(tracking_uri=settings.tracking.uri).get_experiment_by_name(settings.tracking.experiment)
    assert found.artifact_location == (tmp_path / "mlruns").as_uri()
