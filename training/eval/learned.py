"""`features.kind: learned`: a small CNN feature space trained on the user's own images, for any shape.

The network is trained in the pipeline (see `learned_train.py`): as a classifier where the data has labels,
otherwise contrastively (SimCLR-style, each image against its own shifted copy). Either way its 64-d embedding
is the feature vector. Scores in this space are `fd_learned`, `precision_learned`, ... (never FID), and `space`
carries a hash of the weights, so statistics of one trained network are refused by another.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data.dataset import check_images_uint8
from training.eval.artifacts import load_tensors_with_sidecar
from training.eval.extractor import (
    LEARNED_METRICS,
    Features,
    MetricNames,
    extract_batched,
)
from training.eval.features import check_sidecar_space, weights_fingerprint

ARCHITECTURE = "learned-cnn-v1"
Objective = Literal["classifier", "contrastive"]
GRID = 4  # the encoder's last map is pooled to 4×4 before the embedding: keeps coarse layout, any input size


@dataclass(frozen=True)
class LearnedConfig:
    """Everything that fixes the network's shape (stored in the sidecar, so a file rebuilds its own network)."""

    channels: int
    image_size: int
    objective: Objective
    num_classes: int = 0
    feature_dim: int = 64
    width: int = 32

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"the learned feature network takes 1 or 3 channels, got {self.channels}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.objective == "classifier" and self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.num_classes}")

    @property
    def downsamplings(self) -> int:
        """Halve the map while it is at least 8 px, at most 3 times: 8 → 4, 16 → 4, 32 → 4, 64 → 8."""
        size, count = self.image_size, 0
        while size >= 8 and count < 3:
            size, count = size // 2, count + 1
        return count


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.SiLU())


class LearnedNet(nn.Module):
    """Encoder: conv stages with 2× average pooling, a 4×4 adaptive pool, a linear 64-d embedding.
    Head: class logits (classifier) or a small projection for the contrastive loss (SimCLR's: the loss acts on
    the projection, so the embedding below it keeps what the augmentations change)."""

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        self.config = config
        w, levels = config.width, config.downsamplings
        widths = [w * min(2**i, 4) for i in range(levels + 1)]
        stages = [_conv(config.channels, widths[0])]
        for i in range(levels):
            stages += [_conv(widths[i], widths[i]), nn.AvgPool2d(2), _conv(widths[i], widths[i + 1])]
        self.encoder = nn.Sequential(*stages)
        self.embed = nn.Linear(widths[-1] * GRID * GRID, config.feature_dim)
        if config.objective == "classifier":
            self.head = nn.Linear(config.feature_dim, config.num_classes)
        else:
            self.project = nn.Sequential(nn.SiLU(), nn.Linear(config.feature_dim, config.feature_dim), nn.SiLU(),
                                         nn.Linear(config.feature_dim, 32))

    @staticmethod
    def preprocess(images_nchw_uint8: Tensor) -> Tensor:
        return images_nchw_uint8.float().div(127.5).sub(1.0)

    def features(self, x: Tensor) -> Tensor:
        h = F.adaptive_avg_pool2d(self.encoder(x), GRID)
        # Taken before any nonlinearity: denser and closer to Gaussian, which the Fréchet distance assumes.
        return self.embed(h.flatten(1))

    def logits(self, feats: Tensor) -> Tensor:
        return self.head(F.silu(feats))


def to_nchw(images: np.ndarray, config: LearnedConfig) -> Tensor:
    check_images_uint8(images, what="images for the learned feature network")
    want = (config.image_size, config.image_size, config.channels)
    if images.shape[1:] != want:
        raise ValueError(f"the learned feature network takes {'×'.join(map(str, want))} images, "
                         f"got {'×'.join(map(str, images.shape[1:]))}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def space_name(model: LearnedNet) -> str:
    return f"{ARCHITECTURE}:{weights_fingerprint(model)}"


def config_to_json(config: LearnedConfig) -> dict:
    return asdict(config)


class LearnedFeatureExtractor:
    """64-d embeddings of a trained LearnedNet (and class logits when it is a classifier)."""

    metric_names: MetricNames = LEARNED_METRICS

    def __init__(self, model: LearnedNet, *, device: torch.device | str = "cpu", meta: dict | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.config = model.config
        self.space = space_name(model)
        self.meta = meta or {}

    @classmethod
    def from_file(cls, path: str | Path, *, device: torch.device | str = "cpu") -> LearnedFeatureExtractor:
        tensors, meta = load_tensors_with_sidecar(Path(path), "learned feature network")
        if meta.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{path}: architecture {meta.get('architecture')!r}, expected {ARCHITECTURE!r}")
        try:
            model = LearnedNet(LearnedConfig(**meta["config"]))
            model.load_state_dict(tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"{path}: weights or config do not fit {ARCHITECTURE} ({first})") from None
        extractor = cls(model, device=device, meta=meta)
        check_sidecar_space(path, meta, extractor.space)
        return extractor

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor | None, None]:
        feats = self.model.features(LearnedNet.preprocess(batch.to(self.device)))
        logits = self.model.logits(feats) if self.config.objective == "classifier" else None
        return feats, logits, None

    def extract(self, images: np.ndarray, *, batch_size: int = 512, progress: bool = False) -> Features:
        to_nchw(images[:1], self.config)
        return extract_batched(images, self._forward, batch_size=batch_size, progress=progress, desc="learned features")
