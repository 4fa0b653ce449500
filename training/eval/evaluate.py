"""Score a set of samples against reference statistics: the FID family, IS, precision/recall."""
from __future__ import annotations

import numpy as np
import torch

from training.eval.extractor import FeatureExtractor, Features, MetricNames
from training.eval.metrics import (
    IS_SPLITS,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
    split_halves_fd,
)
from training.eval.stats import ReferenceStats


def evaluate_features(
    features: Features,
    *,
    space: str,
    names: MetricNames,
    real_stats: ReferenceStats,
    teacher_stats: ReferenceStats | None = None,
    is_splits: int = IS_SPLITS,
    precision_recall_on: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """The metrics of already-extracted features (see `evaluate_samples` for the names)."""
    real_stats.require_space(space)
    if teacher_stats is not None:
        teacher_stats.require_space(space)
    mu, sigma = feature_statistics(features.pool)
    results = {names.fd: frechet_distance(mu, sigma, real_stats.mu, real_stats.sigma)}
    spatial = None
    if names.sfd is not None and features.spatial is not None and real_stats.spatial_mu is not None:
        spatial = feature_statistics(features.spatial)
        results[names.sfd] = frechet_distance(*spatial, real_stats.spatial_mu, real_stats.spatial_sigma)
    if features.logits is not None and len(features) >= is_splits:
        results[names.inception_score] = inception_score(features.logits, is_splits)
    if precision_recall_on and min(len(features), real_stats.pr_features.shape[0]) > real_stats.k:
        # Kynkäänniemi et al. compare sets of equal size: subsample the larger side (seeded).
        generator = torch.Generator().manual_seed(seed)
        keep = min(len(features), real_stats.pr_features.shape[0])
        fake = features.pool[torch.randperm(len(features), generator=generator)[:keep]]
        real, radii = real_stats.pr_features, real_stats.pr_radii
        if keep < real.shape[0]:
            # The stored radii belong to the full stored set; a subset needs its own.
            real, radii = real[torch.randperm(real.shape[0], generator=generator)[:keep]], None
        precision, recall = precision_recall(real, fake, k=real_stats.k, real_radii=radii)
        results[names.precision] = precision
        results[names.recall] = recall
    if teacher_stats is not None:
        results[names.against_teacher(names.fd)] = frechet_distance(mu, sigma, teacher_stats.mu, teacher_stats.sigma)
        if spatial is not None and teacher_stats.spatial_mu is not None:
            results[names.against_teacher(names.sfd)] = frechet_distance(
                *spatial, teacher_stats.spatial_mu, teacher_stats.spatial_sigma
            )
    return results


def evaluate_samples(
    samples: np.ndarray,
    *,
    extractor: FeatureExtractor,
    real_stats: ReferenceStats,
    teacher_stats: ReferenceStats | None = None,
    batch_size: int = 256,
    is_splits: int = IS_SPLITS,
    precision_recall_on: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """All metrics of uint8 NHWC `samples`, named for the extractor's feature space.

    Inception space: `fid`, `sfid`, `is`, `precision`, `recall` (+ `fid_teacher`, `sfid_teacher`);
    digits space: `fd_digits`, `is_digits`, `precision_digits`, `recall_digits` (+ `fd_digits_teacher`).
    """
    real_stats.require_space(extractor.space)
    if teacher_stats is not None:
        teacher_stats.require_space(extractor.space, what=f"teacher statistics {teacher_stats.name!r}")
    features = extractor.extract(samples, batch_size=batch_size, progress=progress)
    return evaluate_features(
        features,
        space=extractor.space,
        names=extractor.metric_names,
        real_stats=real_stats,
        teacher_stats=teacher_stats,
        is_splits=is_splits,
        precision_recall_on=precision_recall_on,
        seed=seed,
    )


def noise_floor(
    samples: np.ndarray, *, extractor: FeatureExtractor, seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
    """FD between two random halves of one sample set (e.g. the teacher's own samples).

    A model scored on N samples cannot be told apart from its reference below roughly this value;
    note each half has N/2 samples, so it overstates the floor of an N-sample score somewhat.
    """
    features = extractor.extract(samples, batch_size=batch_size)
    return {extractor.metric_names.noise_floor: split_halves_fd(features.pool, seed=seed)}
