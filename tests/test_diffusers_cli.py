"""The user's path with diffusers: `dkdm inspect-teacher`, `dkdm import-teacher` on a diffusers folder, and
`dkdm export --format diffusers` whose folder diffusers' own DDPMPipeline loads and samples from.

NET_ATOL = 1e-5: ours and diffusers run the same float32 operations in a different order (observed ~2e-6).
"""
from __future__ import annotations

import numpy as np
import torch
import yaml
from typer.testing import CliRunner

from diffusers_helpers import diffusers, tiny_pipeline
from dkdm.cli import app
from training.models import create_model, load_checkpoint, save_checkpoint

NET_ATOL = 1e-5
STUDENT = {"family": "adm-unet", "image_size": 8, "in_channels": 3, "num_channels": 32, "num_res_blocks": 1,
           "channel_mult": [1, 2], "attention_resolutions": "4", "num_head_channels": 32, "learn_sigma": False}


def _profile(tmp_path, folder) -> str:
    np.savez(tmp_path / "images.npz", np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    result = CliRunner().invoke(app, ["inspect-teacher", str(folder)])
    assert result.exit_code == 0, result.output
    sections = yaml.safe_load(result.output)
    profile = {"profile": "mine", "data": {"dataset": "npz", "path": "images.npz", "image_size": 8, "channels": 3},
               "features": {"kind": "inception"}, "tracking": {"enabled": False},
               **sections, "distill": {"student": STUDENT, "runs": {"dynamic": {"method": "dynamic",
                                                                                "source": "outputs/pool"}}}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return "mine.yaml"


def _same_eps(model, unet, channels=3, size=8) -> float:
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 990])
    with torch.no_grad():
        return (model(x, t) - unet(x, t).sample).abs().max().item()


def test_diffusers_teacher_in_and_students_out_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tiny_pipeline(tmp_path / "my-ddpm")
    profile = _profile(tmp_path, folder)
    runner = CliRunner()

    result = runner.invoke(app, ["import-teacher", "--profile", profile])
    assert result.exit_code == 0, result.output
    assert "diffusers UNet2DModel" in result.output
    teacher, meta = load_checkpoint("outputs/teacher/teacher.safetensors")
    assert meta.model_config.family == "diffusers-unet2d" and meta.diffusion_config["noise_schedule"] == "linear"
    assert _same_eps(teacher, diffusers.UNet2DModel.from_pretrained(folder / "unet")) < NET_ATOL

    # A student as distillation leaves it (an inline ADM UNet), then exported and reloaded by diffusers itself.
    torch.manual_seed(0)
    student = create_model(STUDENT)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint("student.safetensors", student, model_config=STUDENT, diffusion_config=meta.diffusion_config)
    for checkpoint, model in (("student.safetensors", student.eval()),
                              ("outputs/teacher/teacher.safetensors", teacher)):
        result = runner.invoke(app, ["export", "--format", "diffusers", "--checkpoint", checkpoint,
                                     "--out", "exported"])
        assert result.exit_code == 0, result.output
        pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "exported")
        assert pipe.scheduler.config.variance_type == "fixed_small"
        assert _same_eps(model, pipe.unet) < NET_ATOL
        images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
        assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()


def test_a_profile_that_does_not_match_the_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tiny_pipeline(tmp_path / "my-ddpm")
    profile = yaml.safe_load((tmp_path / _profile(tmp_path, folder)).read_text())
    profile["diffusion"]["noise_schedule"] = "cosine"
    del profile["diffusion"]["beta_start"], profile["diffusion"]["beta_end"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(profile))
    result = CliRunner().invoke(app, ["import-teacher", "--profile", "mine.yaml"])
    assert result.exit_code == 2
    assert "diffusion: the teacher's scheduler needs noise_schedule: \"linear\"" in result.output
    assert not (tmp_path / "outputs" / "teacher" / "teacher.safetensors").exists()


def test_dit_students_are_refused_by_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"family": "dit", "input_size": 8, "patch_size": 2, "in_channels": 1, "hidden_size": 32, "depth": 1,
              "num_heads": 2}
    save_checkpoint("dit.safetensors", create_model(config), model_config=config, diffusion_config={})
    result = CliRunner().invoke(app, ["export", "--checkpoint", "dit.safetensors"])
    assert result.exit_code == 2
    assert "not exportable to diffusers" in result.output
    assert not (tmp_path / "outputs").exists()
