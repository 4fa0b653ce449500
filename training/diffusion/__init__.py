"""Gaussian diffusion as in Improved DDPM (pixel space) and as LDM runs it (latent space): schedules, respacing,
reverse steps, samplers and losses."""
from training.diffusion.config import DiffusionConfig
from training.diffusion.gaussian import GaussianDiffusion, create_diffusion, step_from_output
from training.diffusion.ldm import LatentDiffusion
from training.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from training.diffusion.respace import space_timesteps
from training.diffusion.schedules import ScheduleTables, make_betas

# The two processes speak one interface (p_mean_variance, p_sample, training_losses, sample, model_timesteps).
Process = GaussianDiffusion | LatentDiffusion

__all__ = [
    "LatentDiffusion",
    "Process",
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
