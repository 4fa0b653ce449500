"""diffusers teachers in, students out: the maths agree with diffusers' own DDPMScheduler and UNet2DModel.

Tolerances. diffusers keeps its schedule tables in float32, where 1 - alphas_cumprod near t = 1 loses about
three digits to cancellation (its step then differs from the exact one by up to 3.6e-4 at t = 1). Ours are
float64, cast per lookup. So the golden step test runs diffusers' own `step()` on its tables promoted to float64
(the same formulas, without the cancellation) and compares at ATOL = 1e-5: float32 arithmetic on values of
magnitude ~1 (observed <= 7e-7). Separately, diffusers' float32 tables equal ours to float32 precision.
Network outputs are the same float32 operations in another order: NET_ATOL = 1e-5 (observed <= 6e-6).
"""
from __future__ import annotations

import json

import pytest
import torch

from diffusers_helpers import diffusers, tiny_pipeline
from training.diffusion import create_diffusion
from training.distill.objective import dkdm_losses
from training.models import CheckpointError, build_from_state_dict, create_model, get_preset, parse_model_config
from training.models.diffusers_export import to_unet2d
from training.models.diffusers_io import read_diffusers_teacher

ATOL = 1e-5
NET_ATOL = 1e-5


def _ours(folder):
    teacher = read_diffusers_teacher(folder)
    model = build_from_state_dict(teacher.model_config, teacher.state_dict).eval()
    return model, create_diffusion(**teacher.diffusion), teacher


@pytest.mark.parametrize("variance_type,schedule,learn_sigma", [
    ("fixed_small", "linear", False), ("fixed_large", "squaredcos_cap_v2", False), ("learned_range", "linear", True)])
@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_one_ancestral_step_equals_ddpm_scheduler_step(tmp_path, variance_type, schedule, learn_sigma, t):
    folder = tiny_pipeline(tmp_path / "pipe", variance_type=variance_type, beta_schedule=schedule)
    model, diffusion, teacher = _ours(folder)
    assert teacher.diffusion["learn_sigma"] is learn_sigma
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    sched = pipe.scheduler
    sched.betas = sched.betas.double()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ts = torch.full((2,), t, dtype=torch.int64)
    with torch.no_grad():
        theirs_out = pipe.unet(x, t).sample
        out = diffusion.p_mean_variance(model, x, ts, clip_denoised=True)
    assert torch.allclose(out["model_output"], theirs_out, atol=NET_ATOL)
    # diffusers draws its noise from the generator it is given; we hand ours the same draw.
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    step = pipe.scheduler.step(theirs_out, t, x, generator=torch.Generator().manual_seed(7))
    ours = out["mean"] + (t != 0) * torch.exp(0.5 * out["log_variance"]) * noise
    assert torch.allclose(out["pred_xstart"], step.pred_original_sample, atol=ATOL)
    assert torch.allclose(ours, step.prev_sample, atol=ATOL), (ours - step.prev_sample).abs().max()


def test_a_diffusers_teacher_tells_samplers_its_image_shape(tmp_path):
    from training.eval.sampling import infer_image_shape

    model, _, _ = _ours(tiny_pipeline(tmp_path / "pipe", sample_size=16))
    assert infer_image_shape(model) == (3, 16)


def test_scheduler_maps_to_our_process(tmp_path):
    folder = tiny_pipeline(tmp_path / "pipe", variance_type="fixed_large", steps=200)
    _, diffusion, teacher = _ours(folder)
    assert teacher.diffusion == {"steps": 200, "noise_schedule": "linear", "learn_sigma": False, "sigma_small": False,
                                 "predict_xstart": False, "beta_start": 0.0001, "beta_end": 0.02}
    theirs = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.double().numpy()
    assert abs(diffusion.alphas_cumprod - theirs).max() < 1e-6  # float32 precision of their tables


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_dkdm_loss_on_a_diffusers_teacher_is_eps_mse_plus_kl_when_learned(tmp_path, variance_type):
    folder = tiny_pipeline(tmp_path / "pipe", variance_type=variance_type)
    teacher, diffusion, info = _ours(folder)
    student = create_model({**info.model_config, "block_out_channels": [32, 32]}).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 10, 400, 999])
    with torch.no_grad():
        teacher_out = diffusion.p_mean_variance(teacher, x, t, clip_denoised=True)
        losses = dkdm_losses(diffusion, student, x, t, teacher_out)
        eps_t, eps_s = teacher.unet(x, t).sample[:, :3], student.unet(x, t).sample[:, :3]
    expected_mse = ((eps_t - eps_s) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(losses["mse"], expected_mse, atol=1e-6)
    if variance_type == "learned_range":
        assert (losses["vb"] > 0).all() and torch.allclose(losses["loss"], losses["mse"] + losses["vb"])
    else:
        assert torch.equal(losses["loss"], losses["mse"]) and not losses["vb"].any()


@pytest.mark.parametrize("preset", ["ci-teacher", "digits-student", "adm-small"])
def test_adm_unet_maps_exactly_to_unet2d(preset):
    cfg = parse_model_config(get_preset(preset))
    torch.manual_seed(0)
    ours = create_model(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
        unet = to_unet2d(ours, cfg).eval()
        x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
        t = torch.tensor([3, 917])
        diff = (ours(x, t) - unet(x, t).sample).abs().max().item()
    assert diff < NET_ATOL, diff


def test_unmappable_architectures_are_refused_in_one_line():
    dit = parse_model_config(get_preset("ci-student"))
    with pytest.raises(ValueError, match="not exportable.*class-conditional"):
        to_unet2d(create_model(dit), dit)
    wide = parse_model_config({**get_preset("ci-teacher"), "channel_mult": [2, 2]})
    with pytest.raises(ValueError, match=r"channel_mult\[0\] == 1"):
        to_unet2d(create_model(wide), wide)


def test_bad_diffusers_folders_are_refused(tmp_path):
    folder = tiny_pipeline(tmp_path / "pipe")
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    with pytest.raises(CheckpointError, match="prediction_type 'v_prediction' is not supported"):
        read_diffusers_teacher(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "variance_type": "learned_range"}))
    with pytest.raises(CheckpointError, match="outputs 3 channels"):
        read_diffusers_teacher(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="only safetensors weights"):
        read_diffusers_teacher(folder)
