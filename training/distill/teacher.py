"""The teacher's reverse step as one callable, so pools and sources stay generic over pixel and latent teachers."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from training.diffusion import GaussianDiffusion, step_from_output
from training.train.precision import autocast_for


class TeacherStep(Protocol):
    """(x_t, t, noise) -> (teacher_out as p_mean_variance returns it, x_{t-1}); no gradients."""

    def __call__(self, x_t: Tensor, t: Tensor, noise: Tensor) -> tuple[dict[str, Tensor], Tensor]: ...


class DiffusionTeacherStep:
    """One ancestral step of `teacher` on `diffusion`, computed in chunks of `batch_size` under no_grad.

    Pixel DKDM clamps the teacher's x0 estimate (clip_denoised=True); LDM teachers do not. The network runs
    under bf16 autocast on CUDA; the diffusion arithmetic stays float32.
    """

    def __init__(
        self,
        teacher: nn.Module,
        diffusion: GaussianDiffusion,
        *,
        clip_denoised: bool = True,
        batch_size: int | None = None,
        precision: str = "auto",
    ) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.diffusion = diffusion
        self.clip_denoised = clip_denoised
        self.batch_size = batch_size
        self.precision = precision

    def _forward(self, x: Tensor, t_model: Tensor) -> Tensor:
        with autocast_for(x.device, self.precision):
            return self.teacher(x, t_model)

    @torch.no_grad()
    def __call__(self, x_t: Tensor, t: Tensor, noise: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        n = x_t.shape[0]
        chunk = self.batch_size or n
        if chunk >= n:
            out = self.diffusion.p_mean_variance(self._forward, x_t, t, clip_denoised=self.clip_denoised)
            return out, step_from_output(out, t, noise)
        pieces = [
            self.diffusion.p_mean_variance(
                self._forward, x_t[i : i + chunk], t[i : i + chunk], clip_denoised=self.clip_denoised
            )
            for i in range(0, n, chunk)
        ]
        out = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
        return out, step_from_output(out, t, noise)
