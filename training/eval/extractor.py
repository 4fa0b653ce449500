"""The feature-space interface the metrics share: Inception-v3 for the paper; offline, a digits classifier or a
network learned on the user's own images."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from training.data.dataset import check_images_uint8


@dataclass(frozen=True)
class MetricNames:
    """What each metric is called in one feature space, so an offline score is never reported as FID."""

    fd: str
    inception_score: str
    precision: str
    recall: str
    sfd: str | None = None

    @staticmethod
    def against_teacher(name: str) -> str:
        return f"{name}_teacher"

    @property
    def noise_floor(self) -> str:
        return f"{self.fd}_noise_floor"


INCEPTION_METRICS = MetricNames(fd="fid", inception_score="is", precision="precision", recall="recall", sfd="sfid")
DIGITS_METRICS = MetricNames(
    fd="fd_digits", inception_score="is_digits", precision="precision_digits", recall="recall_digits"
)
LEARNED_METRICS = MetricNames(
    fd="fd_learned", inception_score="is_learned", precision="precision_learned", recall="recall_learned"
)
# The metric names of each `features.kind`, so the pipeline names scores without loading a network.
METRICS_BY_KIND = {"digits": DIGITS_METRICS, "inception": INCEPTION_METRICS, "learned": LEARNED_METRICS}


@dataclass(frozen=True)
class Features:
    """Per-image features, float32 on the CPU.

    `pool`: the vectors FD and precision/recall use; `logits`: class logits for the Inception Score;
    `spatial`: the sFID vectors (only the Inception space has them).
    """

    pool: Tensor
    logits: Tensor | None = None
    spatial: Tensor | None = None

    def __len__(self) -> int:
        return int(self.pool.shape[0])


@runtime_checkable
class FeatureExtractor(Protocol):
    """`space` names the feature space exactly (network and weights); statistics of another space are refused."""

    space: str
    metric_names: MetricNames

    def extract(self, images: np.ndarray, *, batch_size: int = 256, progress: bool = False) -> Features: ...


def extract_batched(
    images: np.ndarray,
    forward: Callable[[Tensor], tuple[Tensor, Tensor | None, Tensor | None]],
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> Features:
    """Run `forward` (uint8 NCHW batch → pool, logits, spatial) over uint8 NHWC images."""
    check_images_uint8(images, what="images to featurise")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pools, logits, spatials = [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
            pool, logit, spatial = forward(batch)
            pools.append(pool.float().cpu())
            if logit is not None:
                logits.append(logit.float().cpu())
            if spatial is not None:
                spatials.append(spatial.float().cpu())
    return Features(
        pool=torch.cat(pools),
        logits=torch.cat(logits) if logits else None,
        spatial=torch.cat(spatials) if spatials else None,
    )
