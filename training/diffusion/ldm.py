"""Latent diffusion as the CompVis LDM / DKDM latent models run it.

Sqrt-linear betas, eps-prediction with fixed (posterior) variance, no clipping of x0, float32 lookup tables, DDIM with
LDM's "uniform" discretisation. The first stage is only used through `encode_first_stage` / `decode_first_stage`.
All randomness comes from an explicit `torch.Generator`.

It speaks the pixel process's interface (`GaussianDiffusion`): `p_mean_variance` returns `mean`, `variance`,
`log_variance`, `pred_xstart` and `model_output`; `model_timesteps` / `timestep_map` (the identity: latent processes
are never respaced, DDIM picks its own sub-steps); `training_losses` (`loss`, `mse`, `vb`); `sample`. So the DKDM
teacher step, pool, sources and losses are the pixel ones.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.diffusion.losses import mean_flat

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


class EpsModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


class FirstStage(Protocol):
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor: ...


def sqrt_linear_betas(timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    """LDM's "linear" schedule: betas evenly spaced in sqrt(beta), then squared (float64)."""
    sqrt_betas = torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), timesteps, dtype=torch.float64)
    return (sqrt_betas ** 2).numpy()


@dataclass(frozen=True)
class DDIMSchedule:
    """DDIM tables for S sub-steps. `timesteps[i]` is the network timestep of sampling index i (run from last to 0)."""

    timesteps: torch.Tensor          # int64 (S',)
    alphas: torch.Tensor             # float32: alphas_cumprod at timesteps
    alphas_prev: torch.Tensor        # float64 holding float32 values; entry 0 is alphas_cumprod[0], not 1
    sigmas: torch.Tensor             # float64
    sqrt_one_minus_alphas: torch.Tensor  # float32

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def ddim_uniform_timesteps(steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """LDM "uniform" rule: stride c = T // S from 0, shifted by +1 (S=200 -> 1, 6, ..., 996).

    When T % S != 0 this yields ceil(T / c) steps (S=30 -> 31), as the reference does.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"ddim steps must be in 1..{num_timesteps}, got {steps}")
    stride = num_timesteps // steps
    timesteps = np.arange(0, num_timesteps, stride) + 1
    if timesteps[-1] >= num_timesteps:
        raise ValueError(f"ddim steps {steps}: the uniform rule's last timestep {timesteps[-1]} is out of range")
    return timesteps.astype(np.int64)


@dataclass(frozen=True)
class LatentDiffusionConfig:
    """What defines the process (recorded with pools and synthetic sets so mismatches are caught)."""

    timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    scale_factor: float = 1.0
    beta_schedule: str = "ldm-linear"  # sqrt-linear betas (LDM calls them "linear")
    parameterization: str = "eps"
    # Fixed variance: nothing to learn, so the DKDM objective has no KL term (a class constant, not a setting).
    learn_sigma: ClassVar[bool] = False

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


class LatentDiffusion(nn.Module):
    """Schedule buffers plus the latent samplers and losses; it holds no network.

    `state_dict()` is exactly the 12 float32 schedule buffers of a released LDM checkpoint, in the same order.
    """

    def __init__(self, timesteps: int = 1000, linear_start: float = 0.0015, linear_end: float = 0.0195,
                 scale_factor: float = 1.0) -> None:
        super().__init__()
        if timesteps < 2 or not 0.0 < linear_start < linear_end < 1.0:
            raise ValueError(f"bad LDM schedule: timesteps {timesteps}, linear_start {linear_start}, "
                             f"linear_end {linear_end}")
        if not scale_factor > 0.0:
            raise ValueError(f"latent scale_factor must be positive, got {scale_factor}")
        self.num_timesteps = timesteps
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.scale_factor = float(scale_factor)
        self.config = LatentDiffusionConfig(timesteps, linear_start, linear_end, float(scale_factor))

        betas = sqrt_linear_betas(timesteps, linear_start, linear_end)
        alphas = 1.0 - betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        self.betas_f64 = betas
        self.alphas_cumprod_f64 = acp
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        tables = {
            "betas": betas,
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": acp_prev,
            "sqrt_alphas_cumprod": np.sqrt(acp),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
            "log_one_minus_alphas_cumprod": np.log(1.0 - acp),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1.0),
            "posterior_variance": post_var,
            # Entry 0 is log(1e-20): the LDM clip, not guided-diffusion's copy of entry 1.
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
        }
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(tables[name], dtype=torch.float32))
        lvlb = self.betas ** 2 / (2 * self.posterior_variance * torch.tensor(alphas, dtype=torch.float32)
                                  * (1 - self.alphas_cumprod))
        lvlb[0] = lvlb[1]
        # Only weights a logged (weight-0) vlb term; not part of a checkpoint.
        self.register_buffer("lvlb_weights", lvlb, persistent=False)
        self.register_buffer("timestep_map", torch.arange(timesteps, dtype=torch.int64), persistent=False)

    # ---- lookups -------------------------------------------------------------------------------------------------
    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return table.to(t.device).gather(-1, t).reshape(t.shape[0], *([1] * (ndim - 1)))

    def _check_t(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if t.dtype != torch.int64 or t.shape != (x.shape[0],):
            raise ValueError(f"t must be int64 of shape ({x.shape[0]},), got {t.dtype} {tuple(t.shape)}")

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The network sees the process index itself (`timestep_map` is the identity)."""
        return t

    # ---- forward process -----------------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_t(x_start, t)
        if noise is None:
            noise = _randn_like(x_start, generator)
        return (self._at(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
                - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = (self._at(self.posterior_mean_coef1, t, x_t.ndim) * x_start
                + self._at(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
        return (mean, self._at(self.posterior_variance, t, x_t.ndim),
                self._at(self.posterior_log_variance_clipped, t, x_t.ndim))

    # ---- ancestral (fixed-variance) step: the DKDM teacher step --------------------------------------------------
    def p_mean_variance(self, model: EpsModel | None, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False, model_output: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        """Posterior of x_{t-1} under the model's eps; x0 is not clipped unless asked (LDM never clips)."""
        self._check_t(x_t, t)
        if model_output is None:
            if model is None:
                raise ValueError("p_mean_variance needs a model or a precomputed model_output")
            model_output = model(x_t, t)
        # The network may run under bf16 autocast; the process arithmetic stays float32.
        eps = model_output.float()
        pred_xstart = self.predict_start_from_noise(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, variance, log_variance = self.q_posterior(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart,
                "model_output": eps}

    def p_sample(self, model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False, *,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 model_output: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1}: `sample` plus the p_mean_variance entries. No noise where t == 0.

        `eps` and `pred_x0` repeat `model_output` and `pred_xstart` under the LDM reference's names, which its
        golden fixtures are keyed by."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_output=model_output)
        if noise is None:
            noise = _randn_like(x_t, generator)
        nonzero = (t != 0).to(x_t.dtype).reshape(x_t.shape[0], *([1] * (x_t.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, **out, "eps": out["model_output"], "pred_x0": out["pred_xstart"]}

    # ---- DDIM ----------------------------------------------------------------------------------------------------
    def ddim_schedule(self, steps: int, eta: float = 0.0) -> DDIMSchedule:
        if eta < 0:
            raise ValueError(f"ddim eta must be >= 0, got {eta}")
        ts = ddim_uniform_timesteps(steps, self.num_timesteps)
        acp = self.alphas_cumprod.detach().cpu().numpy()  # float32
        alphas = acp[ts]
        alphas_prev = np.asarray([acp[0], *acp[ts[:-1]]], dtype=np.float64)
        one_minus = (np.float32(1.0) - alphas).astype(np.float64)  # evaluated in float32 as the reference does
        sigmas = eta * np.sqrt((1.0 - alphas_prev) / one_minus * (1.0 - alphas.astype(np.float64) / alphas_prev))
        # numpy's float32 sqrt, which can differ by an ulp from torch's.
        sqrt_one_minus = np.sqrt(np.float32(1.0) - alphas)
        return DDIMSchedule(
            timesteps=torch.from_numpy(ts), alphas=torch.from_numpy(alphas.copy()),
            alphas_prev=torch.from_numpy(alphas_prev), sigmas=torch.from_numpy(sigmas),
            sqrt_one_minus_alphas=torch.from_numpy(sqrt_one_minus.astype(np.float32)),
        )

    def ddim_step(self, model: EpsModel, x: torch.Tensor, index: int, schedule: DDIMSchedule, *,
                  noise: torch.Tensor | None = None, generator: torch.Generator | None = None
                  ) -> dict[str, torch.Tensor]:
        """Sampling index `index` of `schedule` (network timestep `schedule.timesteps[index]`)."""
        b = x.shape[0]
        t = torch.full((b,), int(schedule.timesteps[index]), dtype=torch.int64, device=x.device)

        def coef(table: torch.Tensor) -> torch.Tensor:
            return torch.full((b, 1, 1, 1), float(table[index]), dtype=torch.float32, device=x.device)

        a_t, a_prev = coef(schedule.alphas), coef(schedule.alphas_prev)
        sigma, sqrt_one_minus = coef(schedule.sigmas), coef(schedule.sqrt_one_minus_alphas)
        eps = model(x, t)
        pred_xstart = (x - sqrt_one_minus * eps) / a_t.sqrt()
        x_prev = a_prev.sqrt() * pred_xstart + (1.0 - a_prev - sigma ** 2).sqrt() * eps
        if float(schedule.sigmas[index]) != 0.0:
            if noise is None:
                noise = _randn_like(x, generator)
            x_prev = x_prev + sigma * noise
        # `pred_x0`: the LDM reference's name for pred_xstart, which its golden fixtures are keyed by.
        return {"sample": x_prev, "pred_xstart": pred_xstart, "pred_x0": pred_xstart, "model_output": eps, "t": t}

    @torch.no_grad()
    def sample(self, model: EpsModel, shape: tuple[int, ...], *, generator: torch.Generator, steps: int = 200,
               eta: float = 0.0, progress: bool = False, device: torch.device | str | None = None,
               noise: torch.Tensor | None = None, use_ddim: bool = True) -> torch.Tensor:
        """Latents from x_T = `noise` (else drawn from `generator`), not decoded: DDIM with `steps` sub-steps (the
        paper samples the students with 200, eta 0), or with `use_ddim` false the full T-step fixed-variance
        ancestral chain (the one the DKDM pool walks). Later draws (eta > 0, ancestral noise) come from `generator`."""
        dev = torch.device(device) if device is not None else self.betas.device
        x = noise.to(dev) if noise is not None else torch.randn(shape, generator=generator, device=dev)
        if use_ddim:
            schedule = self.ddim_schedule(steps, eta)
            indices = range(len(schedule) - 1, -1, -1)
        else:
            indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices, desc=f"DDIM {len(schedule)}" if use_ddim else "ancestral")
        for index in indices:
            if use_ddim:
                x = self.ddim_step(model, x, index, schedule, generator=generator)["sample"]
            else:
                t = torch.full((x.shape[0],), index, dtype=torch.int64, device=x.device)
                x = self.p_sample(model, x, t, generator=generator)["sample"]
        return x

    # ---- training objective of the latent baselines --------------------------------------------------------------
    def training_losses(self, model: EpsModel, x_start: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None, *, generator: torch.Generator | None = None
                        ) -> dict[str, torch.Tensor]:
        """LDM's L_simple (eps MSE per sample) for training on latents of real or synthetic data; `vb` is zero
        (fixed variance)."""
        if noise is None:
            noise = _randn_like(x_start, generator)
        x_t = self.q_sample(x_start, t, noise)
        mse = mean_flat((model(x_t, t).float() - noise) ** 2)
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    # ---- first stage ---------------------------------------------------------------------------------------------
    def encode_first_stage(self, first_stage: FirstStage, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> the (unquantised) latent the diffusion runs on, times `scale_factor`."""
        return self.scale_factor * first_stage.encode(x)

    def decode_first_stage(self, first_stage: FirstStage, z: torch.Tensor, force_not_quantize: bool = False
                           ) -> torch.Tensor:
        """Latent -> image; quantises first unless `force_not_quantize` (as LDM does)."""
        return first_stage.decode(z / self.scale_factor, force_not_quantize=force_not_quantize)


def latent_dkdm_loss(student: EpsModel, x_t: torch.Tensor, t: torch.Tensor, teacher_eps: torch.Tensor
                     ) -> torch.Tensor:
    """The DKDM latent objective: per-sample eps MSE between student and teacher at the same (x_t, t).

    The LDM teachers have fixed variance, so there is no vb/KL term; the batch loss is the mean of this vector.
    """
    if teacher_eps.shape != x_t.shape:
        raise ValueError(f"teacher_eps shape {tuple(teacher_eps.shape)} != x_t shape {tuple(x_t.shape)}")
    return mean_flat(F.mse_loss(student(x_t, t), teacher_eps.detach(), reduction="none"))


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        raise ValueError("pass either the noise or a torch.Generator (no hidden global randomness)")
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
