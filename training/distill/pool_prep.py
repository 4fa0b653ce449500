"""The path each pool state takes from noise (s = T) to its end index e: the paper's full chain, or a respaced grid.

A state after h teacher calls sits at grid point s_h = T - round(h * (T - e) / k), k = min(K, T - e) hops in all
(K = the full chain for the paper: k = T - e and s_h = T - h). The grid ends exactly at e, so the end steps keep
the paper's distribution U{1..T-1}, and the teacher work is sum_i min(K, T - e_i) image-steps instead of
sum_i (T - e_i). A hop of one index is the teacher's own ancestral step (learned variance included), so the paper's
procedure is unchanged; a longer hop from index a to b goes through the teacher's x0 estimate: ancestral draws
x_b from the respaced process's reverse step, as IDDPM samples with `timestep_respacing` (the posterior mean
q(x_b | x_a, x0); a teacher that learned its variance interpolates between the hop's beta and posterior variance
by its own output, one that did not takes the posterior variance); ddim takes the deterministic eta-0 update.

Index convention (see pool.py): a state at s holds x at the process's table index s - 1.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from training.distill.config import PoolPrep


def hop_count(s_end: Tensor, num_timesteps: int, max_hops: int | None) -> Tensor:
    """Teacher calls a state started at T spends to reach `s_end`: T - e, or at most K on a respaced grid."""
    full = num_timesteps - s_end
    return full if max_hops is None else full.clamp(max=max_hops)


def next_index(hops_done: Tensor, s_end: Tensor, num_timesteps: int, max_hops: int | None) -> Tensor:
    """Grid point after hop `hops_done + 1` (exact integers: T - floor((2(h+1)(T-e) + k) / 2k))."""
    span = num_timesteps - s_end
    k = hop_count(s_end, num_timesteps, max_hops).clamp(min=1)
    return num_timesteps - (2 * (hops_done + 1) * span + k) // (2 * k)


def teacher_work(s_end: Tensor, num_timesteps: int, prep: PoolPrep) -> int:
    """Image-steps a preparation of states ending at `s_end` costs: the formula the counted work must match."""
    return int(hop_count(s_end, num_timesteps, prep.max_hops()).sum())


class Hop:
    """x at index a -> x at index b < a from the teacher's x0 estimate, by `sampler`, on the process's alpha-bar."""

    def __init__(self, alphas_cumprod: object, sampler: str) -> None:
        table = alphas_cumprod.detach().cpu() if isinstance(alphas_cumprod, Tensor) else torch.from_numpy(
            np.asarray(alphas_cumprod))
        self.abar = table.to(torch.float64)
        self.sampler = sampler

    def __call__(self, x_a: Tensor, teacher_out: dict[str, Tensor], s_from: Tensor, s_to: Tensor,
                 noise: Tensor) -> Tensor:
        abar = self.abar.to(x_a.device)
        shape = (-1, *([1] * (x_a.ndim - 1)))
        a = abar[s_from - 1].reshape(shape)
        b = abar[s_to - 1].reshape(shape)
        x_a64, x064 = x_a.double(), teacher_out["pred_xstart"].double()
        if self.sampler == "ddim":
            eps = (x_a64 - a.sqrt() * x064) / (1 - a).sqrt()
            out = b.sqrt() * x064 + (1 - b).sqrt() * eps
        else:
            ratio = a / b  # alpha of the one respaced step from b to a
            mean = (b.sqrt() * (1 - ratio) * x064 + ratio.sqrt() * (1 - b) * x_a64) / (1 - a)
            beta = 1 - ratio
            log_variance = torch.log((1 - b) / (1 - a) * beta)
            learned = teacher_out.get("model_output")
            channels = x_a.shape[1]
            if learned is not None and learned.shape[1] == 2 * channels:  # IDDPM's learned range
                frac = (learned[:, channels:].double() + 1) / 2
                log_variance = frac * torch.log(beta) + (1 - frac) * log_variance
            out = mean + torch.exp(0.5 * log_variance) * noise.double()
        return out.to(x_a.dtype)


class Walk:
    """How preparation moves the in-flight entries: every step (the paper), or on a respaced grid of at most K hops
    taken by `Hop` on `diffusion`'s alpha-bar table."""

    def __init__(self, prep: PoolPrep, diffusion: object) -> None:
        self.max_hops = prep.max_hops()
        self.num_timesteps = int(diffusion.num_timesteps)  # type: ignore[attr-defined]
        self.hop = Hop(diffusion.alphas_cumprod, prep.sampler) if self.max_hops is not None else None  # type: ignore[attr-defined]
        self.ddim = prep.sampler == "ddim"

    def advance(self, x: Tensor, teacher_out: dict[str, Tensor], x_step: Tensor, s: Tensor, e: Tensor,
                hops_done: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(x at the next grid point, that point) for entries at `s`; `x_step` is the teacher's own one-step x."""
        if self.hop is None:
            return x_step, s - 1
        target = next_index(hops_done, e, self.num_timesteps, self.max_hops)
        far = torch.ones_like(target, dtype=torch.bool) if self.ddim else target < s - 1
        if not bool(far.any()):
            return x_step, target
        hopped = self.hop(x, teacher_out, s, target, noise)
        mask = far.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(mask, hopped, x_step), target
