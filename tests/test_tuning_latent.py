"""`dkdm tune` on a latent profile: the study's trials distil latent students from the latent teacher's pool and
score them by FD' on decoded samples, through the same CLI as pixel profiles."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from tuning_helpers import FAST_TUNE_ENV, journal, load, study_runs

# The latent-ci stages cut to what a study needs inputs from: quality is not under test here, the wiring is.
SHORT_STAGES = {"DKDM_TEACHER__LATENT__FIRST_STAGE__TRAIN__ITERATIONS": "6", "DKDM_TEACHER__TRAIN__ITERATIONS": "6",
                "DKDM_FEATURES__CLASSIFIER_EPOCHS": "1", "DKDM_REFERENCE__NUM_SAMPLES": "48",
                "DKDM_TRACKING__SYSTEM_METRICS": "false"}


def _cli(args: list[str]):
    from dkdm.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.mark.slow  # five latent-ci stages first (minutes on 2 shared cores)
@pytest.mark.timeout(1800)
def test_latent_ci_study_runs_after_the_pipeline_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in {**FAST_TUNE_ENV, **SHORT_STAGES}.items():
        monkeypatch.setenv(key, value)
    for stage in ("data", "autoencoder", "teacher", "features", "reference"):
        done = _cli([stage, "--profile", "latent-ci"])
        assert done.exit_code == 0, (stage, done.output)
    result = _cli(["tune", "--study", "latent", "--n-trials", "2", "--profile", "latent-ci"])
    assert result.exit_code == 0, result.output
    study = load(journal(tmp_path / "optuna.journal"), "latent")
    assert [t.number for t in study.trials] == [0, 1]
    assert study.user_attrs["profile"] == "latent-ci" and study.user_attrs["metric"] == "fd_digits_teacher"
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete, [t.user_attrs for t in study.trials]
    # FD' of decoded 8x8 digits against the teacher's D': finite and positive (an untrained-ish student is far off).
    assert all(math.isfinite(t.value) and t.value > 0 for t in complete)
    parents, runs = study_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "latent")
    assert len(parents) == 1 and len(runs) == 2
