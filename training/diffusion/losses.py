"""Gaussian KL and the discretized Gaussian decoder likelihood (elementwise, natural log units)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Pixels live on a 256-level grid scaled to [-1, 1], so each bin is 2/255 wide.
_HALF_BIN = 1.0 / 255.0
_LOG_FLOOR = 1e-12


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension except the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    tensor = next((v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, Tensor)), None)
    if tensor is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (v if isinstance(v, Tensor) else torch.tensor(v).to(tensor) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF that the reference decoder uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats, elementwise) of uint8-grid images `x` in [-1, 1] under a binned Gaussian.

    The outermost bins extend to -inf / +inf, so values at -1 and 1 take the whole tail mass.
    """
    if x.shape != means.shape or x.shape != log_scales.shape:
        raise ValueError(
            f"x, means and log_scales must share a shape, got {tuple(x.shape)}, {tuple(means.shape)}, "
            f"{tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + _HALF_BIN))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - _HALF_BIN))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=_LOG_FLOOR))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=_LOG_FLOOR))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=_LOG_FLOOR))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )
