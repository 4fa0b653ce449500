"""Refuse teacher/student pairs that cannot distil, before any work, with one line saying why."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.diffusion import GaussianDiffusion


class IncompatibleError(ValueError):
    """Teacher and student (or their diffusions) cannot be paired for DKDM."""


def _probe(model: nn.Module, name: str, diffusion: GaussianDiffusion, image_shape: tuple[int, ...]) -> None:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros((1, *image_shape), device=device)
    t = diffusion.model_timesteps(torch.tensor([diffusion.num_timesteps - 1], device=device))
    was_training = model.training
    model.eval()  # no dropout draws: the probe must not touch any random stream
    try:
        with torch.no_grad():
            out = model(x, t)
    except Exception as err:  # noqa: BLE001 - any failure here means the shape does not fit
        raise IncompatibleError(
            f"{name} cannot process images of shape {tuple(image_shape)}: {type(err).__name__}: {err}".splitlines()[0]
        ) from None
    finally:
        model.train(was_training)
    channels = image_shape[0] * (2 if diffusion.config.learn_sigma else 1)
    expected = (1, channels, *image_shape[1:])
    if tuple(out.shape) != expected:
        raise IncompatibleError(
            f"{name} outputs shape {tuple(out.shape)[1:]} for images {tuple(image_shape)}, expected {expected[1:]} "
            f"(learn_sigma={diffusion.config.learn_sigma})"
        )


def check_compatible(
    teacher: nn.Module,
    teacher_diffusion: GaussianDiffusion,
    student: nn.Module,
    student_diffusion: GaussianDiffusion,
    image_shape: tuple[int, ...],
) -> None:
    """Raise IncompatibleError unless the student can learn from this teacher on images of `image_shape`.

    Both processes must have the same T, schedule and respacing (a teacher index must mean the same noise
    level to the student); a learned-variance teacher needs a learned-variance student (the KL term trains
    it); both must predict the same quantity; both networks must map (1, *image_shape) to the expected output.
    """
    tc, sc = teacher_diffusion.config, student_diffusion.config
    if tc.steps != sc.steps:
        raise IncompatibleError(f"teacher diffusion has T={tc.steps} steps, student T={sc.steps}; they must match")
    if teacher_diffusion.num_timesteps != student_diffusion.num_timesteps or not torch.equal(
        teacher_diffusion.timestep_map, student_diffusion.timestep_map
    ):
        raise IncompatibleError(
            f"teacher respacing {tc.timestep_respacing!r} differs from the student's {sc.timestep_respacing!r}"
        )
    if tc.noise_schedule != sc.noise_schedule or not np.allclose(
        teacher_diffusion.betas, student_diffusion.betas, rtol=1e-12, atol=0
    ):
        raise IncompatibleError(
            f"teacher noise schedule {tc.noise_schedule!r} differs from the student's {sc.noise_schedule!r}"
        )
    if tc.predict_xstart != sc.predict_xstart:
        raise IncompatibleError("teacher and student must both predict epsilon (or both x0): predict_xstart differs")
    if tc.learn_sigma and not sc.learn_sigma:
        raise IncompatibleError(
            "the teacher has a learned variance but the student does not; pixel DKDM needs learn_sigma=True "
            "for the student (its variance is trained by the KL term)"
        )
    if len(image_shape) < 2:
        raise IncompatibleError(f"image_shape must be (C, H, W) or similar, got {tuple(image_shape)}")
    _probe(teacher, "teacher", teacher_diffusion, tuple(image_shape))
    _probe(student, "student", student_diffusion, tuple(image_shape))
