"""Gaussian diffusion as in Improved DDPM: schedules, respacing, reverse steps, samplers and losses."""
from training.diffusion.config import DiffusionConfig
from training.diffusion.gaussian import GaussianDiffusion, create_diffusion, step_from_output
from training.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from training.diffusion.respace import space_timesteps
from training.diffusion.schedules import ScheduleTables, make_betas

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "ScheduleTables",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "make_betas",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
    "step_from_output",
]
