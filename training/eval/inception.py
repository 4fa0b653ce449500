"""Inception-v3 with the standard FID weights (torch-fidelity's port of the 2015 TF graph).

One forward pass gives what the ADM evaluator reads from the TF graph: `pool_3` (2048-d, FID and
precision/recall), the bias-free logits (Inception Score), and the first 7 channels of
`mixed_6/conv` for sFID. In PyTorch naming `mixed_6` is `Mixed_6d` (TF counts mixed, mixed_1, ...
from `Mixed_5b`) and its `conv` is the 1×1 branch, `Mixed_6d.branch1x1` (conv, batch norm, ReLU),
whose 17×17×7 output flattens, in TF's H, W, C order, to 2023 values.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from training.eval.extractor import INCEPTION_METRICS, Features, MetricNames, extract_batched

WEIGHTS_ENV = "DKDM_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SPACE = "inception-v3-fid:2015-12-05"
SPATIAL_LAYER = "Mixed_6d.branch1x1"
SPATIAL_CHANNELS = 7


def weights_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def default_weights_path() -> Path:
    """Where torch.hub (and so torch-fidelity / torchmetrics) caches the file, so one download serves all."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights_path(weights_path: str | Path | None = None) -> Path:
    """The argument, else $DKDM_INCEPTION_WEIGHTS, else the torch.hub cache; it must exist (no download)."""
    chosen = weights_path or os.environ.get(WEIGHTS_ENV) or default_weights_path()
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}: download {weights_url()} and save it as {path} "
            f"(or point {WEIGHTS_ENV} / --inception-weights at {WEIGHTS_FILE} elsewhere)"
        )
    return path


def load_fid_inception(weights_path: str | Path | None = None) -> nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 giving (pool_3 2048-d, bias-free logits), loaded offline."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = resolve_weights_path(weights_path)
    # torch-fidelity unpickles the file with weights_only=False; loading it first with weights_only=True
    # proves it holds nothing but tensors, so that second load cannot run code.
    from training.models.safe_load import load_weights_only

    load_weights_only(path, what="Inception weights file")  # UnsafeFileError (a ValueError): one safe line
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
    )


class InceptionFeatureExtractor:
    """FID/IS/sFID/precision-recall features from an Inception-v3 network.

    `network` takes uint8 N×3×H×W and returns (pool features, logits); it must have a submodule at
    `spatial_layer`. By default it is the real FID network; tests pass a small stand-in (and a
    different `space`, so stand-in statistics can never be mistaken for real ones).
    """

    metric_names: MetricNames = INCEPTION_METRICS

    def __init__(
        self,
        weights_path: str | Path | None = None,
        *,
        device: torch.device | str = "cpu",
        network: nn.Module | None = None,
        space: str = INCEPTION_SPACE,
        spatial_layer: str = SPATIAL_LAYER,
    ) -> None:
        if network is not None and space == INCEPTION_SPACE:
            raise ValueError("a custom network needs its own `space` name, not the real Inception's")
        self.device = torch.device(device)
        self.network = (network if network is not None else load_fid_inception(weights_path)).to(self.device).eval()
        self.space = space
        self._spatial: list[Tensor] = []
        try:
            layer = self.network.get_submodule(spatial_layer)
        except AttributeError:
            raise ValueError(f"the Inception network has no layer {spatial_layer!r} for sFID features") from None
        layer.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, _module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        if output.shape[1] < SPATIAL_CHANNELS:
            raise ValueError(f"sFID layer has {output.shape[1]} channels, needs at least {SPATIAL_CHANNELS}")
        self._spatial.append(output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1))

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if batch.shape[1] == 1:  # grey images: Inception expects RGB
            batch = batch.expand(-1, 3, -1, -1)
        self._spatial.clear()
        pool, logits = self.network(batch.to(self.device))
        spatial = self._spatial.pop()
        return pool, logits, spatial

    def extract(self, images: np.ndarray, *, batch_size: int = 100, progress: bool = False) -> Features:
        return extract_batched(images, self._forward, batch_size=batch_size, progress=progress, desc="inception")
