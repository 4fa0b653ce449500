"""The DKDM objective: the student matches the teacher's epsilon (MSE) and reverse-step Gaussian (KL in bits)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from training.diffusion import GaussianDiffusion, mean_flat, normal_kl

LossFn = Callable[[nn.Module, object], dict[str, Tensor]]


def dkdm_losses(
    diffusion: GaussianDiffusion,
    student: nn.Module,
    x_t: Tensor,
    t: Tensor,
    teacher_out: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Per-sample DKDM loss (`training_losses_kd`): loss = mse + vb, each of shape (B,).

    `teacher_out` is the teacher's `p_mean_variance(..., clip_denoised=True)` output on the same x_t, t.
    mse compares epsilon channels only; vb = KL(N(mean_T, var_T) || N(mean_S, var_S)) in bits with the student's
    mean rebuilt from its detached eps and *unclamped* x0, so vb trains only the variance channels. The same KL
    is used at t = 0 (no decoder NLL). With a fixed-variance student (latent DKDM) vb is zero.
    """
    channels = x_t.shape[1]
    raw = student(x_t, diffusion.model_timesteps(t)).float()
    eps_student = raw[:, :channels]
    eps_teacher = teacher_out["model_output"][:, :channels]
    mse = mean_flat((eps_teacher - eps_student) ** 2)
    if not diffusion.config.learn_sigma:
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
    frozen = torch.cat([eps_student.detach(), raw[:, channels:]], dim=1)
    out_s = diffusion.p_mean_variance(None, x_t, t, clip_denoised=False, model_output=frozen)
    kl = normal_kl(teacher_out["mean"], teacher_out["log_variance"], out_s["mean"], out_s["log_variance"])
    vb = mean_flat(kl) / math.log(2.0)
    if diffusion.config.rescale_learned_sigmas:
        vb = vb * (diffusion.num_timesteps / 1000.0)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def dkdm_loss_fn(diffusion: GaussianDiffusion) -> LossFn:
    """The trainer's loss function over `TeacherBatch`es for this student diffusion."""

    def loss(student: nn.Module, batch: object) -> dict[str, Tensor]:
        return dkdm_losses(diffusion, student, batch.x_t, batch.t, batch.teacher_out)  # type: ignore[attr-defined]

    return loss


def hybrid_loss_fn(diffusion: GaussianDiffusion) -> LossFn:
    """Ordinary hybrid-loss training (baselines) over `DataBatch`es that carry their own t and noise."""

    def loss(model: nn.Module, batch: object) -> dict[str, Tensor]:
        return diffusion.training_losses(model, batch.x_start, batch.t, noise=batch.noise)  # type: ignore[attr-defined]

    return loss
