"""Periodic evaluation during distillation: a small-budget FD the trainer calls every K steps."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from training.eval.extractor import FeatureExtractor
from training.eval.metrics import feature_statistics, frechet_distance
from training.eval.sampling import generate_samples
from training.eval.stats import ReferenceStats


@runtime_checkable
class ImageSampler(Protocol):
    """Draws uint8 NHWC images from a model by its own rule (a latent space samples latents and decodes them)."""

    def sample_images(self, model: nn.Module, n: int, *, batch_size: int, seed: int,
                      device: torch.device | str) -> np.ndarray: ...


def make_fd_metric(
    extractor: FeatureExtractor,
    reference_stats: ReferenceStats,
    diffusion: Any,
    *,
    n_samples: int,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    metric_name: str,
    use_ddim: bool = False,
    **shape: int,
) -> Callable[[int, nn.Module], dict[str, float]]:
    """`eval_fn(step, model) -> {metric_name: FD}` on `n_samples` fresh samples against `reference_stats`.

    `diffusion` is a (respaced) pixel process sampled here, or an `ImageSampler` that samples by its own rule.

    Every call draws from the same seed, so successive scores differ by the model only, not by the
    noise. With teacher-sample statistics this is FD' (the paper's D'), to be named e.g.
    `fd_digits_teacher`; a few hundred samples rank checkpoints, they do not reproduce a 50k score.
    """
    if n_samples < 2:
        raise ValueError(f"an FD needs at least 2 samples, got n_samples={n_samples}")

    def generate(model: nn.Module) -> np.ndarray:
        if isinstance(diffusion, ImageSampler):
            return diffusion.sample_images(model, n_samples, batch_size=batch_size, seed=seed, device=device)
        return generate_samples(model, diffusion, n_samples, batch_size=batch_size, seed=seed, device=device,
                                use_ddim=use_ddim, progress=False, **shape)

    return fd_metric(generate, extractor, reference_stats, metric_name=metric_name, batch_size=batch_size)


def fd_metric(
    generate: Callable[[nn.Module], np.ndarray],
    extractor: FeatureExtractor,
    reference_stats: ReferenceStats,
    *,
    metric_name: str,
    batch_size: int,
) -> Callable[[int, nn.Module], dict[str, float]]:
    """`eval_fn(step, model) -> {metric_name: FD}` of the uint8 images `generate(model)` returns (any sampler,
    pixel or decoded latent) against `reference_stats`."""
    reference_stats.require_space(extractor.space)

    def eval_fn(step: int, model: nn.Module) -> dict[str, float]:
        features = extractor.extract(generate(model), batch_size=batch_size)
        mu, sigma = feature_statistics(features.pool)
        return {metric_name: frechet_distance(mu, sigma, reference_stats.mu, reference_stats.sigma)}

    return eval_fn


@dataclass
class BestTracker:
    """Keeps the best (lowest) score seen; `patience` evaluations without improvement means stop."""

    patience: int | None = None
    best_value: float = float("inf")
    best_step: int | None = None
    _stale: int = field(default=0, repr=False)

    def update(self, step: int, value: float) -> bool:
        """Record a score; True when it is a new best (the caller then keeps that checkpoint)."""
        if value < self.best_value:
            self.best_value, self.best_step, self._stale = value, step, 0
            return True
        self._stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self._stale >= self.patience
