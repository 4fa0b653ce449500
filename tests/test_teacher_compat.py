"""Every stage that uses the teacher refuses one made for another diffusion or image shape: one line naming both
values, exit code 2, and every existing output left exactly as it was."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app

COMMANDS = {
    "pool": ["prepare-pool"],
    "reference": ["reference"],
    "distill": ["distill", "--run", "dynamic"],
    "train": ["train", "--run", "data_free"],
    "evaluate-teacher": ["evaluate", "--teacher"],
    "evaluate-student": ["evaluate", "--run", "dynamic"],
    "sample": ["sample", "outputs/teacher/teacher.safetensors", "--out", "outputs/samples.npz"],
    "tune": ["tune", "--study", "s", "--n-trials", "1"],
}


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """The ci profile with a teacher trained at T=20 and outputs of an earlier run already in place."""
    import torch

    from training.models import create_model, get_preset, save_checkpoint

    for key in list(os.environ):
        if key.startswith("DKDM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((profiles.packaged_dir() / "ci.yaml").read_text())
    torch.manual_seed(0)
    diffusion = {"steps": 20, "noise_schedule": "cosine", "learn_sigma": True, "sigma_small": False,
                 "predict_xstart": False, "rescale_learned_sigmas": False, "timestep_respacing": ""}
    for path, preset in (("outputs/teacher/teacher.safetensors", "ci-teacher"),
                         ("outputs/students/dynamic/student.safetensors", "ci-student")):
        Path(path).parent.mkdir(parents=True)
        save_checkpoint(path, create_model(get_preset(preset)), model_config=get_preset(preset),
                        diffusion_config=diffusion, provenance={"source": "test"})
    for name, text in {"outputs/pool/pool.safetensors": "an earlier pool",
                       "outputs/evaluation/teacher/metrics.json": '{"fd_digits": 1.5}',
                       "outputs/evaluation/dynamic/metrics.json": '{"fd_digits": 2.5}',
                       "outputs/reference/teacher_stats.safetensors": "stats",
                       "outputs/reference/teacher_samples.safetensors": "samples",
                       "outputs/features/classifier.safetensors": "classifier",
                       "outputs/data/dataset.npz": "data"}.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    return tmp_path


def _profile(**diffusion):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["diffusion"].update(diffusion)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("stage", sorted(COMMANDS))
def test_a_teacher_of_another_T_is_refused_by_every_stage(project, stage):
    _profile(steps=1000)
    before = _snapshot(project)
    result = CliRunner().invoke(app, COMMANDS[stage])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "T=20" in lines[0] and "diffusion.steps = 1000" in lines[0], lines[0]
    assert _snapshot(project) == before, "a refused stage wrote or removed something"


@pytest.mark.parametrize("change, named", [
    ({"noise_schedule": "linear"}, ("schedule=cosine", "diffusion.noise_schedule = linear")),
    # The profile itself is refused first: its teacher preset learns the variance and the process does not.
    ({"learn_sigma": False}, ("learn_sigma=True", "diffusion.learn_sigma is False")),
    ({"predict_xstart": True}, ("prediction=eps", "diffusion.predict_xstart = x0")),
])
def test_schedule_and_variance_mismatches_are_named(project, change, named):
    _profile(**change)
    before = _snapshot(project)
    result = CliRunner().invoke(app, COMMANDS["pool"])
    assert result.exit_code == 2, result.output
    assert all(text in result.stderr for text in named), result.stderr
    assert _snapshot(project) == before


def test_image_shape_mismatch_is_named(project):
    from dkdm.errors import DkdmError
    from dkdm.settings import load_settings
    from dkdm.teacher_compat import check_teacher_compat

    settings = load_settings(Path("params.yaml"))
    settings = settings.model_copy(update={"data": settings.data.model_copy(update={"image_size": 16})})
    with pytest.raises(DkdmError, match=r"image shape=1x8x8, the profile has data.channels/image_size = 1x16x16"):
        check_teacher_compat(settings)


def test_a_matching_teacher_passes(project):
    from dkdm.settings import load_settings
    from dkdm.teacher_compat import check_evaluation, check_teacher_compat

    settings = load_settings(Path("params.yaml"))
    check_teacher_compat(settings)
    check_evaluation(settings, Path("outputs/students/dynamic/student.safetensors"), pipeline_file=True)


def test_a_latent_teacher_of_another_T_or_latent_shape_is_refused(tmp_path, monkeypatch):
    import json

    from dkdm.errors import DkdmError
    from dkdm.settings import load_settings
    from dkdm.teacher_compat import check_teacher_compat
    from training.models import get_preset
    from training.models.checkpoint import FORMAT

    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    settings = load_settings(profiles.packaged_dir() / "latent-ci.yaml")
    latent = settings.teacher.latent
    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(b"")

    def sidecar(timesteps: int, image_size: int) -> None:
        model = {**get_preset(settings.teacher.preset), "image_size": image_size}
        diffusion = {"space": "latent", "timesteps": timesteps, "linear_start": latent.linear_start,
                     "linear_end": latent.linear_end, "scale_factor": 1.0}
        (tmp_path / "teacher.json").write_text(json.dumps({"format": FORMAT, "model_config": model,
                                                           "diffusion_config": diffusion, "provenance": {}}))

    sidecar(settings.diffusion.steps, 4)
    check_teacher_compat(settings, weights)
    sidecar(7, 4)
    with pytest.raises(DkdmError, match=rf"T=7, the profile has diffusion.steps = {settings.diffusion.steps}"):
        check_teacher_compat(settings, weights)
    sidecar(settings.diffusion.steps, 8)
    with pytest.raises(DkdmError, match=r"latent shape=3x8x8, the profile has teacher.latent.first_stage = 3x4x4"):
        check_teacher_compat(settings, weights)
    with pytest.raises(DkdmError, match="is a latent-space model but the profile has space: pixel"):
        check_teacher_compat(load_settings(profiles.packaged_dir() / "ci.yaml"), weights)
