"""Architectures in the profile: inline `{family: ...}` mappings and user presets, wherever a preset name goes."""
from __future__ import annotations

import json
import sys

import pytest
import yaml
from typer.testing import CliRunner

from dkdm.cli import app
from dkdm.errors import DkdmError
from dkdm.settings import load_settings
from training.models import create_model, get_preset, get_preset_info, load_checkpoint, save_checkpoint
from training.models.arch import ArchRef

TEACHER = {"family": "adm-unet", "image_size": 16, "in_channels": 3, "num_channels": 32, "num_res_blocks": 1,
           "channel_mult": [1, 2], "attention_resolutions": "8", "num_head_channels": 32}
STUDENT = {"family": "dit", "input_size": 16, "patch_size": 4, "in_channels": 3, "hidden_size": 32, "depth": 2,
           "num_heads": 2}


def _write(tmp_path, **sections):
    profile = {"profile": "mine", "data": {"dataset": "npz", "path": "x.npz", "image_size": 16, "channels": 3},
               "features": {"kind": "inception"}, "tracking": {"enabled": False},
               "teacher": {"preset": TEACHER}, "presets": {"tiny-dit": STUDENT},
               "distill": {"student": "tiny-dit", "runs": {"dynamic": {"method": "dynamic", "source": "outputs/pool"},
                                                           "own": {"method": "dynamic", "source": "outputs/pool",
                                                                   "student": {**STUDENT, "depth": 1}}}}}
    for key, value in sections.items():
        profile[key] = {**profile.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def test_inline_and_user_architectures_resolve_to_names_that_carry_their_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(_write(tmp_path))
    teacher, student, own = settings.teacher.preset, settings.distill.student, settings.distill.student_for("own")
    assert isinstance(teacher, ArchRef) and teacher.startswith("inline-adm-unet-")
    assert student == "tiny-dit" and get_preset(student)["hidden_size"] == 32
    assert get_preset(own)["depth"] == 1
    assert get_preset_info(teacher).num_parameters == sum(p.numel() for p in create_model(TEACHER).parameters())
    # The resolved profile (what MLflow logs and config/resolved.yaml holds) reloads to the same architectures.
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(settings.for_log()))
    reloaded = load_settings(again)
    assert (reloaded.teacher.preset, reloaded.distill.student_for("own")) == (teacher, own)


def test_a_checkpoint_of_an_inline_student_rebuilds_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = load_settings(_write(tmp_path)).distill.student_for("own")
    save_checkpoint(tmp_path / "s.safetensors", create_model(get_preset(own)), model_config=get_preset(own),
                    diffusion_config={})
    model, meta = load_checkpoint(tmp_path / "s.safetensors")
    assert meta.model_config.to_dict()["depth"] == 1 and len(model.blocks) == 1
    assert json.loads((tmp_path / "s.json").read_text())["model_config"]["family"] == "dit"


@pytest.mark.parametrize("sections,message", [
    ({"teacher": {"preset": {**TEACHER, "family": "resnet"}}}, "teacher.preset: family: 'resnet' is not one of"),
    ({"teacher": {"preset": {**TEACHER, "num_chanels": 32}}},
     "teacher.preset: adm-unet config: num_chanels: unknown key"),
    ({"teacher": {"preset": {**TEACHER, "image_size": 32}}}, "makes 3x32x32 images but data is 3x16x16"),
    ({"distill": {"runs": {"r": {"method": "dynamic", "source": "outputs/pool",
                                 "student": {**STUDENT, "input_size": 8}}}}},
     "distill.runs.r.student: student 'inline-dit-"),
    ({"distill": {"runs": {"r": {"method": "dynamic", "source": "outputs/pool",
                                 "student": {**STUDENT, "learn_sigma": False}}}}},
     "has learn_sigma=True but student 'inline-dit-"),
    ({"presets": {"ci-teacher": TEACHER}}, "presets.ci-teacher: 'ci-teacher' is a built-in preset"),
    ({"teacher": {"preset": {**TEACHER, "learn_sigma": False}}},
     "has learn_sigma=False but diffusion.learn_sigma is True"),
    ({"distill": {"student": "tiny-ditt"}}, "distill.student: unknown name 'tiny-ditt'"),
])
def test_bad_architectures_are_one_line_errors(tmp_path, monkeypatch, sections, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DkdmError, match=None) as err:
        load_settings(_write(tmp_path, **sections))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_presets_file_profile_show_and_dkdm_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "presets.yaml").write_text(yaml.safe_dump({"file-teacher": TEACHER}))
    path = _write(tmp_path, teacher={"preset": "file-teacher"})
    runner = CliRunner()
    result = runner.invoke(app, ["presets", "--profile", str(path)])
    assert result.exit_code == 0, result.output
    count = sum(p.numel() for p in create_model(TEACHER).parameters())
    assert f"  file-teacher: adm-unet, {count:,} parameters" in result.output
    assert "  ci-teacher: adm-unet, 183,106 parameters" in result.output
    assert f"  teacher = file-teacher: adm-unet, {count:,} parameters" in result.output
    result = runner.invoke(app, ["profile", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert f"# teacher = file-teacher: adm-unet, {count:,} parameters" in result.output
    assert yaml.safe_load(result.output)["presets"]["file-teacher"]["num_channels"] == 32
    # configs/presets.yaml is not mistaken for a profile
    assert "presets" not in runner.invoke(app, ["profile", "list"]).output.split()


def test_cli_rejects_a_bad_inline_architecture_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, presets={"tiny-dit": {**STUDENT, "hidden_size": 30}})
    result = CliRunner().invoke(app, ["presets", "--profile", str(path)])
    assert result.exit_code == 2
    assert result.output == ("dkdm: error: presets.tiny-dit: dit config: hidden_size: the 2-D sin-cos position table "
                             "needs a multiple of 4, got 30\n")


def test_without_diffusers_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an environment without the extra sees
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unet").mkdir()
    result = CliRunner().invoke(app, ["inspect-teacher", "unet"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "pip install 'dkdm[diffusers]'" in result.output
    path = _write(tmp_path, teacher={"preset": {"family": "diffusers-unet2d", "sample_size": 16}})
    result = CliRunner().invoke(app, ["profile", "show", str(path)])
    assert result.exit_code == 2 and "pip install 'dkdm[diffusers]'" in result.output


def test_a_foreign_adm_pt_of_an_unlisted_size_imports_with_an_inline_preset(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = create_model(TEACHER)
    torch.save({"ema": net.state_dict()}, tmp_path / "adm16.pt")
    path = _write(tmp_path, teacher={"source": "import", "checkpoint": "adm16.pt"})
    result = CliRunner().invoke(app, ["import-teacher", "--profile", str(path)])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(tmp_path / "outputs" / "teacher" / "teacher.safetensors")
    assert meta.model_config.to_dict() == create_model(TEACHER).config.to_dict()
    assert meta.provenance["preset"].startswith("inline-adm-unet-")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values(), strict=False))


def test_the_tuning_space_takes_an_inline_student(tmp_path, monkeypatch):
    from dkdm.tuning.config import TuneSettings
    from dkdm.tuning.space import SearchSpace, student_config

    monkeypatch.chdir(tmp_path)
    student = load_settings(_write(tmp_path)).distill.student_for("own")
    space = SearchSpace.build(TuneSettings(), student=student, default_method="dynamic", num_timesteps=1000)
    assert space.width_key == "hidden_size" and 32 in space.widths
    wider = student_config(student, max(space.widths))
    assert wider["depth"] == 1 and wider["hidden_size"] == max(space.widths)
