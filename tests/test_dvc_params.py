"""dvc.yaml's `params` of each stage are exactly the settings the stage reads.

Complete: a setting a stage reads but does not declare would not rerun the stage when it changes (the periodic FD'
of `distill@` read evaluate.respacing and evaluate.seed undeclared). Exact: a declared setting the stage never
reads reruns it for nothing. The reads are recorded while every stage of dvc.yaml runs, in process, exactly as
dvc.yaml calls it (tests/settings_reads.py records them at the settings objects, so the stages can change freely).
Two runs between them take every branch that depends on the profile: `ci` (pixel space, digits features) with the
periodic FD' switched on, and `latent-ci` (latent space, DDIM evaluation, a first stage).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app
from settings_reads import recording

REPO = Path(__file__).resolve().parents[1]

# Settings that choose how and where a stage runs, not what it produces: never DVC params.
NOT_PARAMS = (
    "runtime",   # device, CPU threads, progress bars
    "tracking",  # where MLflow records the run
)
# ...except the world size where it changes what a stage makes: W ranks train one model on W batches and keep W
# pools. Sampling stages read it too (to launch themselves) but draw the same images at any world size.
WORLD_SIZE = ("runtime.nproc_per_node", "runtime.nnodes")
WORLD_SIZE_STAGES = ("teacher", "pool", "distill")
# Reads on branches neither recorded profile can take offline (no Inception weights, no foreign teacher .pt): the
# stages that take them, by dvc.yaml stage name. They count as read there, so they must be declared there.
UNTAKEN_BRANCHES = {
    "features.inception_weights": ("features.kind: inception",  # make_extractor loads Inception from this file
                                   ("data", "reference", "distill", "evaluate_teacher", "evaluate")),
    "teacher.checkpoint": ("teacher.source: import", ("data", "teacher")),
}
# Toy sizes: the reads do not depend on them, the test's run time does. The ci run also switches on the periodic
# FD' of distillation (train.eval_every), the branch the latent profile takes and the ci profile does not.
SHRINK = {
    "ci": {"DKDM_TEACHER__TRAIN__ITERATIONS": "4", "DKDM_DISTILL__TRAIN__ITERATIONS": "4",
           "DKDM_DISTILL__TRAIN__EVAL_EVERY": "2", "DKDM_DISTILL__TRAIN__SELECT_METRIC": "fd_digits_teacher",
           "DKDM_DISTILL__EVAL_SAMPLES": "16", "DKDM_FEATURES__CLASSIFIER_EPOCHS": "1",
           "DKDM_REFERENCE__NUM_SAMPLES": "32", "DKDM_EVALUATE__NUM_SAMPLES": "16"},
    "latent-ci": {"DKDM_TEACHER__TRAIN__ITERATIONS": "4", "DKDM_DISTILL__TRAIN__ITERATIONS": "4",
                  "DKDM_DISTILL__TRAIN__EVAL_EVERY": "2", "DKDM_DISTILL__EVAL_SAMPLES": "16",
                  "DKDM_FEATURES__CLASSIFIER_EPOCHS": "1", "DKDM_REFERENCE__NUM_SAMPLES": "32",
                  "DKDM_EVALUATE__NUM_SAMPLES": "16"},
}


def foreach_items(name: str, expression: str, params: dict) -> list[tuple[str, dict[str, str]]]:
    """DVC's foreach over a params value: a mapping gives ${key} per key, a list ${item} per element."""
    value = params
    for part in expression.strip("${} ").split("."):
        value = value[part]
    if isinstance(value, dict):
        return [(f"{name}@{key}", {"${key}": key}) for key in value]
    return [(f"{name}@{item}", {"${item}": str(item)}) for item in value]


def profile_params(profile: str) -> dict:
    return yaml.safe_load((profiles.packaged_dir() / f"{profile}.yaml").read_text())


def dvc_stages(params: dict) -> dict[str, tuple[list[str], set[str]]]:
    """Every stage of dvc.yaml, foreach expanded over `params` (the active params.yaml): name -> (the `dkdm`
    arguments of its cmd, its declared params)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages: dict[str, tuple[list[str], set[str]]] = {}
    for name, body in spec["stages"].items():
        items = foreach_items(name, body["foreach"], params) if "foreach" in body else [(name, {})]
        body = body.get("do", body)
        for stage, subst in items:
            def fill(text: str, subst: dict[str, str] = subst) -> str:
                for var, value in subst.items():
                    text = text.replace(var, value)
                return text
            args = shlex.split(fill(body["cmd"]))
            assert args[0] == "${dkdm}", f"{stage}: cmd must call ${{dkdm}}"
            stages[stage] = (args[1:], {fill(p) for p in body.get("params", [])})
    return stages


def covers(declared: str, read: str) -> bool:
    return read == declared or read.startswith(declared + ".")


def record_pipeline(profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((profiles.packaged_dir() / f"{profile}.yaml").read_text())
    for key in [k for k in os.environ if k.startswith("DKDM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    monkeypatch.setenv("DKDM_RUNTIME__PROGRESS", "false")
    for key, value in SHRINK[profile].items():
        monkeypatch.setenv(key, value)
    reads: dict[str, set[str]] = {}
    for stage, (args, _) in dvc_stages(profile_params(profile)).items():
        with monkeypatch.context() as patch, recording(patch) as recorder:
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{profile} {stage}: {result.output[-2000:]}"
        reads[stage] = {r for r in recorder.reads if not any(covers(p, r) for p in NOT_PARAMS)
                        or (r in WORLD_SIZE and stage.split("@")[0] in WORLD_SIZE_STAGES)}
        reads[stage] |= {key for key, (_, stages) in UNTAKEN_BRANCHES.items() if stage.split("@")[0] in stages}
    return reads


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, dict[str, set[str]]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return {profile: record_pipeline(profile, tmp_path_factory.mktemp(profile), monkeypatch)
                for profile in SHRINK}


@pytest.mark.slow
@pytest.mark.parametrize("profile", list(SHRINK))
def test_every_setting_a_stage_reads_is_among_its_params(recorded, profile):
    missing = {
        stage: sorted(r for r in recorded[profile][stage] if not any(covers(p, r) for p in declared))
        for stage, (_, declared) in dvc_stages(profile_params(profile)).items()
    }
    missing = {stage: keys for stage, keys in missing.items() if keys}
    assert not missing, f"{profile}: stages read settings dvc.yaml does not declare: {missing}"


@pytest.mark.slow
def test_every_param_of_a_stage_is_read_by_it(recorded):
    unread: dict[str, list[str]] = {}
    for profile, reads in recorded.items():
        for stage, (_, declared) in dvc_stages(profile_params(profile)).items():
            generic = stage.split("@")[0]
            # foreach stages: a param is justified if the stage reads it for some run (keys differ per run).
            for param in declared:
                key = param.replace(stage.partition("@")[2], "*") if "@" in stage else param
                seen = any(covers(param, r) or covers(r, param) for r in reads[stage])
                unread.setdefault(f"{generic} {key}", []).append(seen)
    never = sorted(name for name, seen in unread.items() if not any(seen))
    assert not never, f"declared params that no recorded stage run reads: {never}"


def test_dvc_stages_expand_foreach_and_substitute_the_run():
    stages = dvc_stages(profile_params("latent-ci"))
    assert stages["first_stage@autoencoder"][0] == ["autoencoder"]
    assert "first_stage@autoencoder" not in dvc_stages(profile_params("ci"))
    args, declared = stages["distill@dynamic"]
    assert args == ["distill", "--run", "dynamic"]
    assert "distill.runs.dynamic" in declared and not any("${" in p for p in declared)
    assert stages["evaluate_teacher"][0] == ["evaluate", "--teacher"]


def test_the_recorder_sees_leaf_reads_dumps_and_copies(monkeypatch, tmp_path):
    import dkdm.settings

    (tmp_path / "p.yaml").write_text((profiles.packaged_dir() / "ci.yaml").read_text())
    with recording(monkeypatch) as recorder:
        settings = dkdm.settings.load_settings(tmp_path / "p.yaml")
        assert recorder.reads == set(), "loading and validating is not reading"
        _ = settings.distill.rho
        _ = settings.distill.runs["dynamic"].method
        settings.teacher.train.model_dump()
        _ = settings.evaluate.model_copy(update={"seed": 5}).respacing
        settings.for_log()
    assert recorder.reads == {"distill.rho", "distill.runs.dynamic.method", "teacher.train", "evaluate.respacing"}
