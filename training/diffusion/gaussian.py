"""Gaussian diffusion (Improved DDPM): forward process, reverse-step parameters, one-step samplers, losses.

`t` is always an int64 tensor of shape (B,) in this diffusion's own (possibly respaced) index space; the
network is called as `model(x, timestep_map[t])` with original-process timesteps.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from training.diffusion.config import DiffusionConfig
from training.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from training.diffusion.respace import respaced_betas, space_timesteps
from training.diffusion.sampling import sample_loop
from training.diffusion.schedules import ScheduleTables, make_betas

Model = Callable[[Tensor, Tensor], Tensor]


def step_from_output(out: dict[str, Tensor], t: Tensor, noise: Tensor) -> Tensor:
    """x_{t-1} = mean + sigma * noise from a precomputed p_mean_variance output; no noise where t == 0."""
    nonzero = (t != 0).float().reshape(-1, *([1] * (noise.ndim - 1)))
    return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise


def _gaussian_noise(like: Tensor, generator: torch.Generator | None, what: str) -> Tensor:
    # Drawing on the generator's own device and moving makes results independent of where the model runs.
    if generator is None:
        raise ValueError(f"{what} needs either `noise` or an explicit `generator`")
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(like.device)


class GaussianDiffusion:
    """A diffusion process defined by its betas; respaced processes are the same class with a timestep_map."""

    def __init__(self, config: DiffusionConfig, betas: np.ndarray, timestep_map: list[int] | np.ndarray) -> None:
        self.config = config
        self.tables = ScheduleTables.from_betas(betas)
        self.num_timesteps = len(self.tables.betas)
        if len(timestep_map) != self.num_timesteps:
            raise ValueError(f"timestep_map has {len(timestep_map)} entries for {self.num_timesteps} steps")
        self.timestep_map = torch.as_tensor(np.asarray(timestep_map), dtype=torch.int64)
        self._device_tables: dict[torch.device, dict[str, Tensor]] = {}

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> GaussianDiffusion:
        base_betas = make_betas(config.noise_schedule, config.steps, config.beta_start, config.beta_end)
        kept = space_timesteps(config.steps, config.timestep_respacing)
        # Even an unspaced process goes through respacing (betas re-derived from alphas_cumprod), as in the
        # reference; this moves betas by ~1e-13 relative and makes every table bit-identical to it.
        base = ScheduleTables.from_betas(base_betas)
        return cls(config, respaced_betas(base.alphas_cumprod, kept), kept)

    def __getattr__(self, name: str) -> np.ndarray:
        # Expose the float64 tables (betas, alphas_cumprod, ...) as attributes, as callers expect.
        tables = self.__dict__.get("tables")
        if tables is not None and name in tables.__dataclass_fields__:
            return getattr(tables, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"GaussianDiffusion({self.config!r}, num_timesteps={self.num_timesteps})"

    # ---------------------------------------------------------------- table lookups

    def _tables_on(self, device: torch.device) -> dict[str, Tensor]:
        # float64 -> float32 is elementwise, so indexing a pre-cast copy equals casting the looked-up entry.
        if device not in self._device_tables:
            cast = {
                name: torch.from_numpy(array).to(torch.float32).to(device)
                for name, array in self.tables.as_dict().items()
            }
            cast["timestep_map"] = self.timestep_map.to(device)
            self._device_tables[device] = cast
        return self._device_tables[device]

    def _at(self, name: str, t: Tensor, ndim: int) -> Tensor:
        """Table entries for each batch element as float32, shaped (B, 1, ..., 1) to broadcast over ndim dims."""
        return self._tables_on(t.device)[name][t].reshape(-1, *([1] * (ndim - 1)))

    def _check_t(self, x: Tensor, t: Tensor) -> None:
        if t.dtype != torch.int64 or t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t must be an int64 tensor of shape ({x.shape[0]},), got {t.dtype} of shape {tuple(t.shape)}"
            )
        # Only checked on CPU: on an accelerator the check would synchronise every sampling step.
        if t.device.type == "cpu" and len(t) and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got values in [{int(t.min())}, {int(t.max())}]")

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The original-process timesteps the network sees for respaced indices t (int64)."""
        return self._tables_on(t.device)["timestep_map"][t]

    def _call_model(self, model: Model, x: Tensor, t: Tensor) -> Tensor:
        out = model(x, self.model_timesteps(t))
        # Callers may run the network under bf16 autocast; the diffusion maths stays float32.
        out = out.float()
        channels = x.shape[1] * (2 if self.config.learn_sigma else 1)
        if out.shape[0] != x.shape[0] or out.shape[1] != channels or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output has shape {tuple(out.shape)}, expected ({x.shape[0]}, {channels}, "
                f"{', '.join(map(str, x.shape[2:]))}) (learn_sigma={self.config.learn_sigma})"
            )
        return out

    # ---------------------------------------------------------------- forward process

    def q_sample(
        self, x_start: Tensor, t: Tensor, noise: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample x_t ~ q(x_t | x_0)."""
        self._check_t(x_start, t)
        if noise is None:
            noise = _gaussian_noise(x_start, generator, "q_sample")
        return (
            self._at("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
            + self._at("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise
        )

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        n = x_t.ndim
        mean = self._at("posterior_mean_coef1", t, n) * x_start + self._at("posterior_mean_coef2", t, n) * x_t
        variance = self._at("posterior_variance", t, n).expand_as(x_t)
        log_variance = self._at("posterior_log_variance_clipped", t, n).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        n = x_t.ndim
        return self._at("sqrt_recip_alphas_cumprod", t, n) * x_t - self._at("sqrt_recipm1_alphas_cumprod", t, n) * eps

    def eps_from_xstart(self, x_t: Tensor, t: Tensor, pred_xstart: Tensor) -> Tensor:
        n = x_t.ndim
        return (self._at("sqrt_recip_alphas_cumprod", t, n) * x_t - pred_xstart) / self._at(
            "sqrt_recipm1_alphas_cumprod", t, n
        )

    # ---------------------------------------------------------------- reverse process

    def _log_variance(self, x_t: Tensor, t: Tensor, var_values: Tensor | None) -> Tensor:
        n = x_t.ndim
        if var_values is not None:
            # LEARNED_RANGE: v in [-1, 1] interpolates between the posterior variance and beta in log space.
            frac = (var_values + 1) / 2
            max_log = self._at("log_betas", t, n)
            min_log = self._at("posterior_log_variance_clipped", t, n)
            return frac * max_log + (1 - frac) * min_log
        if self.config.sigma_small:
            return self._at("posterior_log_variance_clipped", t, n).expand_as(x_t)
        # Fixed "large" variance is beta, except at t=0 where the posterior variance keeps the decoder sane.
        large = self._at("log_betas", t, n).expand_as(x_t)
        first = self._at("posterior_log_variance_clipped", t, n).expand_as(x_t)
        return torch.where((t == 0).reshape(-1, *([1] * (n - 1))), first, large)

    def p_mean_variance(
        self, model: Model | None, x_t: Tensor, t: Tensor, clip_denoised: bool = True,
        model_output: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Mean, variance, log_variance and pred_xstart of p(x_{t-1} | x_t); model_output is the raw network output.

        If `model_output` is given the model is not called (it may be None then).
        """
        self._check_t(x_t, t)
        if model_output is None:
            if model is None:
                raise ValueError("p_mean_variance needs a model or a precomputed model_output")
            model_output = self._call_model(model, x_t, t)
        else:
            model_output = model_output.float()
        channels = x_t.shape[1]
        if self.config.learn_sigma:
            prediction, var_values = model_output[:, :channels], model_output[:, channels:]
        else:
            prediction, var_values = model_output, None
        log_variance = self._log_variance(x_t, t, var_values)

        if self.config.predict_xstart:
            pred_xstart = prediction
        else:
            pred_xstart = self.predict_xstart_from_eps(x_t, t, prediction)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "model_output": model_output,
        }

    step_from_output = staticmethod(step_from_output)

    def p_sample(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        clip_denoised: bool = True,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One ancestral step x_t -> x_{t-1}; pass `noise` to reproduce a step exactly, else it comes from
        `generator`."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
        if noise is None:
            noise = _gaussian_noise(x_t, generator, "p_sample")
        return {
            "sample": step_from_output(out, t, noise),
            "pred_xstart": out["pred_xstart"],
            "mean": out["mean"],
            "log_variance": out["log_variance"],
        }

    def ddim_sample(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        clip_denoised: bool = True,
        eta: float = 0.0,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One DDIM step x_t -> x_{t-1}; the learned variance is ignored, eta scales the injected noise."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
        n = x_t.ndim
        # Re-derive eps from the (possibly clipped) x0 so the step is consistent with it.
        eps = self.eps_from_xstart(x_t, t, out["pred_xstart"])
        alpha_bar = self._at("alphas_cumprod", t, n)
        alpha_bar_prev = self._at("alphas_cumprod_prev", t, n)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta != 0:
            if noise is None:
                noise = _gaussian_noise(x_t, generator, "ddim_sample with eta > 0")
            nonzero = (t != 0).float().reshape(-1, *([1] * (n - 1)))
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator,
        device: torch.device | str,
        use_ddim: bool = False,
        eta: float = 0.0,
        clip_denoised: bool = True,
        progress: bool = False,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Run the full reverse chain from x_T ~ N(0, I) (or `noise`, the starting x_T) and return x_0."""
        return sample_loop(
            self,
            model,
            shape,
            generator=generator,
            device=device,
            use_ddim=use_ddim,
            eta=eta,
            clip_denoised=clip_denoised,
            progress=progress,
            noise=noise,
        )

    # ---------------------------------------------------------------- training

    def training_losses(
        self,
        model: Model,
        x_start: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample hybrid loss: `mse` on the prediction plus `vb` (VLB term in bits, variance only).

        With a fixed variance nothing learns the variance, so `vb` is zero and `loss` equals `mse`.
        """
        if noise is None:
            noise = _gaussian_noise(x_start, generator, "training_losses")
        x_t = self.q_sample(x_start, t, noise)
        model_output = self._call_model(model, x_t, t)
        channels = x_start.shape[1]
        prediction = model_output[:, :channels]
        target = x_start if self.config.predict_xstart else noise
        mse = mean_flat((target - prediction) ** 2)
        if not self.config.learn_sigma:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

        # The mean is detached so the VLB term trains only the variance channels.
        frozen = torch.cat([prediction.detach(), model_output[:, channels:]], dim=1)
        vb = self.vb_terms_bpd(x_start, x_t, t, model_output=frozen)
        if self.config.rescale_learned_sigmas:
            vb = vb * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def vb_terms_bpd(self, x_start: Tensor, x_t: Tensor, t: Tensor, *, model_output: Tensor) -> Tensor:
        """Per-sample VLB term in bits: KL to the true posterior for t > 0, decoder NLL at t == 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(None, x_t, t, clip_denoised=False, model_output=model_output)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)


def create_diffusion(
    steps: int = 1000,
    noise_schedule: str = "cosine",
    learn_sigma: bool = True,
    timestep_respacing: str | int | None = "",
    predict_xstart: bool = False,
    rescale_learned_sigmas: bool = False,
    sigma_small: bool = False,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> GaussianDiffusion:
    """Build a (possibly respaced) Gaussian diffusion; arguments follow the guided-diffusion vocabulary."""
    config = DiffusionConfig(
        steps=steps,
        noise_schedule=noise_schedule,
        learn_sigma=learn_sigma,
        sigma_small=sigma_small,
        predict_xstart=predict_xstart,
        rescale_learned_sigmas=rescale_learned_sigmas,
        timestep_respacing="" if timestep_respacing is None else str(timestep_respacing),
        beta_start=beta_start,
        beta_end=beta_end,
    )
    return GaussianDiffusion.from_config(config)
