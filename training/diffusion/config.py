"""The typed description of a diffusion process (stored in checkpoint sidecars)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.diffusion.respace import space_timesteps
from training.diffusion.schedules import NOISE_SCHEDULES


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything that defines a diffusion process; stored in checkpoint sidecars next to the model config.

    learn_sigma=True uses the learned-range variance (the network outputs 2C channels); otherwise the variance
    is fixed to the posterior variance (sigma_small=True) or to beta (the "large" choice of Improved DDPM).
    rescale_learned_sigmas multiplies the VLB term by T/1000 (RESCALED_MSE).
    """

    steps: int = 1000
    noise_schedule: str = "cosine"
    learn_sigma: bool = True
    sigma_small: bool = False
    predict_xstart: bool = False
    rescale_learned_sigmas: bool = False
    timestep_respacing: str = ""
    # Endpoints of a linear / scaled_linear schedule as a diffusers scheduler states them (None: scaled with T).
    beta_start: float | None = None
    beta_end: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"diffusion steps must be a positive integer, got {self.steps!r}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"unknown noise_schedule {self.noise_schedule!r}; expected one of {NOISE_SCHEDULES}")
        if (self.beta_start is None) != (self.beta_end is None):
            raise ValueError("diffusion beta_start and beta_end: give both or neither")
        if self.beta_start is not None:
            if self.noise_schedule == "cosine":
                raise ValueError("diffusion beta_start/beta_end: only the linear schedules take endpoints")
            if not 0 < self.beta_start < self.beta_end < 1:
                raise ValueError(f"diffusion beta_start/beta_end: need 0 < {self.beta_start} < {self.beta_end} < 1")
        elif self.noise_schedule == "scaled_linear":
            raise ValueError("diffusion noise_schedule 'scaled_linear' needs beta_start and beta_end")
        respacing = "" if self.timestep_respacing is None else str(self.timestep_respacing).strip()
        object.__setattr__(self, "timestep_respacing", respacing)
        space_timesteps(self.steps, respacing)  # raises a one-line error on a bad spec

    def same_process(self, other: DiffusionConfig) -> bool:
        """Whether both describe the same underlying forward process (T and schedule), whatever their respacing.

        Teacher and student must agree on this so a teacher timestep means the same noise level to the student.
        """
        return (self.steps, self.noise_schedule, self.beta_start, self.beta_end) == (
            other.steps, other.noise_schedule, other.beta_start, other.beta_end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown diffusion config keys: {', '.join(unknown)}")
        return cls(**data)

