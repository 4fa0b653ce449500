"""Beta schedules and the float64 tables derived from them.

All tables stay float64 numpy arrays; the diffusion casts each looked-up entry to float32, as the reference
implementation does, so per-sample arithmetic is float32 while the tables keep full precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_SCHEDULES = ("linear", "cosine", "scaled_linear")

# Improved DDPM caps every beta so the last steps of the cosine schedule do not become singular.
MAX_BETA = 0.999


def _cosine_alpha_bar(s: np.ndarray | float) -> np.ndarray | float:
    return np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(noise_schedule: str, num_timesteps: int, beta_start: float | None = None,
               beta_end: float | None = None) -> np.ndarray:
    """Betas (float64, shape (T,)) of the named schedule.

    `beta_start`/`beta_end` (both or neither) fix the endpoints of the linear schedules as given, the way a
    diffusers scheduler config states them; without them the linear endpoints scale with T.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if noise_schedule in ("linear", "scaled_linear"):
        if beta_start is None:
            # The endpoints are scaled with T so that any T gives roughly the same total noise as T=1000.
            scale = 1000 / num_timesteps
            beta_start, beta_end = scale * 0.0001, scale * 0.02
        if noise_schedule == "scaled_linear":  # linear in sqrt(beta) (latent diffusion's schedule)
            return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if noise_schedule == "cosine":
        steps = np.arange(num_timesteps, dtype=np.float64)
        ratio = _cosine_alpha_bar((steps + 1) / num_timesteps) / _cosine_alpha_bar(steps / num_timesteps)
        return np.minimum(1.0 - ratio, MAX_BETA)
    raise ValueError(f"unknown noise_schedule {noise_schedule!r}; expected one of {NOISE_SCHEDULES}")


@dataclass(frozen=True)
class ScheduleTables:
    """Every per-timestep table a Gaussian diffusion needs, computed from its betas (all float64, shape (T,))."""

    betas: np.ndarray
    log_betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> ScheduleTables:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        acp = np.cumprod(1.0 - betas)
        acp_prev = np.append(1.0, acp[:-1])
        acp_next = np.append(acp[1:], 0.0)
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        # posterior_variance[0] is 0, so its log is replaced by entry 1 (irrelevant: t=0 uses the decoder).
        clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else posterior_variance
        return cls(
            betas=betas,
            log_betas=np.log(betas),
            alphas_cumprod=acp,
            alphas_cumprod_prev=acp_prev,
            alphas_cumprod_next=acp_next,
            sqrt_alphas_cumprod=np.sqrt(acp),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1.0),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=np.log(clipped),
            posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
            posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(1.0 - betas) / (1.0 - acp),
        )

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)
