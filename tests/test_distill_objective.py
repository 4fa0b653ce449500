"""The DKDM objective against the reference fixtures, and the compatibility check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.diffusion import create_diffusion
from training.distill import IncompatibleError, check_compatible, dkdm_losses
from training.models import create_model, get_preset

# README "Self-check and tolerances": network outputs agree to 1e-5 abs; every other array to
# 1e-4 x max(1, max|ref|), because the t=0 KL (~3.9e3) and t=999 values amplify float32 rounding.
NET_ATOL = 1e-5
REL = 1e-4


def _model(golden_dir, preset: str, weights: str) -> torch.nn.Module:
    model = create_model(get_preset(preset))
    model.load_state_dict(load_file(str(golden_dir / weights)))
    return model.eval()


def _close(name: str, got: torch.Tensor, ref: np.ndarray, *, net: bool = False) -> None:
    ref_t = torch.from_numpy(ref)
    tol = NET_ATOL if net else REL * max(1.0, float(ref_t.abs().max()))
    err = float((got.detach().float() - ref_t).abs().max())
    assert err <= tol, f"{name}: max abs error {err:.3g} > tolerance {tol:.3g}"


@pytest.mark.parametrize(
    "fixture, student_preset, student_weights",
    [
        ("dkdm_losses.npz", "adm-small", "adm_small/weights_student.safetensors"),
        ("dkdm_losses_dit_student.npz", "dit-small", "dit_small/weights.safetensors"),
    ],
)
def test_dkdm_losses_match_reference(golden_dir, fixture, student_preset, student_weights):
    ref = np.load(golden_dir / "diffusion" / fixture)
    diffusion = create_diffusion()
    teacher = _model(golden_dir, "adm-small", "adm_small/weights.safetensors")
    student = _model(golden_dir, student_preset, student_weights)
    x_t, t = torch.from_numpy(ref["x_t"]), torch.from_numpy(ref["t"])
    with torch.no_grad():
        teacher_out = diffusion.p_mean_variance(teacher, x_t, t, clip_denoised=True)
        _close("teacher_raw_output", teacher_out["model_output"], ref["teacher_raw_output"], net=True)
        for key in ("mean", "log_variance", "pred_xstart"):
            _close(f"teacher_{key}", teacher_out[key], ref[f"teacher_{key}"])
        losses = dkdm_losses(diffusion, student, x_t, t, teacher_out)
    for key in ("loss", "mse", "vb"):
        assert losses[key].shape == (4,)
        _close(key, losses[key], ref[key])


def test_vb_trains_only_the_variance_channels(golden_dir):
    ref = np.load(golden_dir / "diffusion" / "dkdm_losses.npz")
    diffusion = create_diffusion()
    teacher = _model(golden_dir, "adm-small", "adm_small/weights.safetensors")
    x_t, t = torch.from_numpy(ref["x_t"]), torch.from_numpy(ref["t"])
    with torch.no_grad():
        teacher_out = diffusion.p_mean_variance(teacher, x_t, t, clip_denoised=True)
    raw = torch.from_numpy(ref["student_raw_output"]).clone().requires_grad_(True)
    losses = dkdm_losses(diffusion, lambda x, tt: raw, x_t, t, teacher_out)
    (grad,) = torch.autograd.grad(losses["vb"].sum(), raw)
    assert float(grad[:, :3].abs().max()) == 0.0, "vb must not reach the epsilon channels"
    assert float(grad[:, 3:].abs().max()) > 0.0
    _close("student-output loss", losses["loss"].detach(), ref["loss"])


def _tiny(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(get_preset(preset))


def test_compatible_pair_passes():
    diffusion = create_diffusion(steps=100)
    check_compatible(_tiny("ci-teacher"), diffusion, _tiny("ci-student"), diffusion, (1, 8, 8))


@pytest.mark.parametrize(
    "student_diffusion, image_shape, message",
    [
        (dict(steps=50), (1, 8, 8), "T=100 steps, student T=50"),
        (dict(steps=100, noise_schedule="linear"), (1, 8, 8), "noise schedule"),
        (dict(steps=100, timestep_respacing="10"), (1, 8, 8), "respacing"),
        (dict(steps=100, learn_sigma=False), (1, 8, 8), "learned variance"),
        (dict(steps=100), (3, 8, 8), "teacher cannot process images of shape (3, 8, 8)"),
    ],
)
def test_incompatible_pairs_fail_with_one_line(student_diffusion, image_shape, message):
    teacher_diffusion = create_diffusion(steps=100)
    student = _tiny("ci-student")
    with pytest.raises(IncompatibleError) as err:
        check_compatible(_tiny("ci-teacher"), teacher_diffusion, student, create_diffusion(**student_diffusion),
                         image_shape)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_student_image_size_mismatch_is_reported():
    diffusion = create_diffusion(steps=100)
    student = create_model({**get_preset("ci-student"), "input_size": 16, "image_size": 16})
    with pytest.raises(IncompatibleError, match="student"):
        check_compatible(_tiny("ci-teacher"), diffusion, student, diffusion, (1, 8, 8))
