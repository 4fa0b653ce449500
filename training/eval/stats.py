"""Reference statistics: computed once per reference set (real data, teacher samples), saved, reused.

An artifact is `X.safetensors` (float64 mean/covariance, float32 features kept for
precision/recall and their k-NN radii, sFID statistics when the space has them) plus `X.json`
(feature space, counts, a hash of the input images). Evaluation refuses statistics whose feature
space differs from the extractor's.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.data.dataset import check_images_uint8
from training.eval.artifacts import load_tensors_with_sidecar, save_tensors_with_sidecar
from training.eval.extractor import FeatureExtractor, Features
from training.eval.metrics import PR_NEIGHBOURS, feature_statistics, knn_radii

FORMAT_VERSION = 1
DEFAULT_MAX_PR_FEATURES = 10_000


@dataclass(frozen=True)
class ReferenceStats:
    feature_space: str
    count: int
    input_hash: str
    mu: np.ndarray
    sigma: np.ndarray
    pr_features: Tensor
    pr_radii: Tensor
    k: int = PR_NEIGHBOURS
    spatial_mu: np.ndarray | None = None
    spatial_sigma: np.ndarray | None = None
    name: str = ""

    def require_space(self, space: str, *, what: str | None = None) -> None:
        if space != self.feature_space:
            label = what or f"reference statistics {self.name!r}"
            raise ValueError(
                f"{label} are in feature space {self.feature_space!r}, not {space!r}: "
                "recompute them with this extractor"
            )


def hash_images(images: np.ndarray) -> str:
    """sha256 over shape and bytes: identifies the exact reference set the statistics came from."""
    digest = hashlib.sha256(repr(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def stats_from_features(
    features: Features,
    *,
    feature_space: str,
    input_hash: str,
    max_pr_features: int = DEFAULT_MAX_PR_FEATURES,
    k: int = PR_NEIGHBOURS,
    seed: int = 0,
    name: str = "",
) -> ReferenceStats:
    """Statistics of already-extracted features; a seeded random subset is kept for precision/recall."""
    mu, sigma = feature_statistics(features.pool)
    n = len(features)
    keep = min(n, max_pr_features)
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values
    pr_features = features.pool[subset].float().contiguous()
    spatial_mu = spatial_sigma = None
    if features.spatial is not None:
        spatial_mu, spatial_sigma = feature_statistics(features.spatial)
    return ReferenceStats(
        feature_space=feature_space,
        count=n,
        input_hash=input_hash,
        mu=mu,
        sigma=sigma,
        pr_features=pr_features,
        pr_radii=knn_radii(pr_features, k),
        k=k,
        spatial_mu=spatial_mu,
        spatial_sigma=spatial_sigma,
        name=name,
    )


def compute_reference_stats(
    images: np.ndarray,
    extractor: FeatureExtractor,
    out_path: str | Path | None,
    *,
    batch_size: int = 256,
    max_pr_features: int = DEFAULT_MAX_PR_FEATURES,
    k: int = PR_NEIGHBOURS,
    seed: int = 0,
    name: str = "",
    progress: bool = False,
) -> ReferenceStats:
    """Featurise `images` (uint8 NHWC) once and save the statistics evaluation needs to `out_path`."""
    check_images_uint8(images, what="reference images")
    if len(images) <= k:
        raise ValueError(f"reference set has {len(images)} images; precision/recall need more than k={k}")
    features = extractor.extract(images, batch_size=batch_size, progress=progress)
    stats = stats_from_features(
        features,
        feature_space=extractor.space,
        input_hash=hash_images(images),
        max_pr_features=max_pr_features,
        k=k,
        seed=seed,
        name=name or (Path(out_path).stem if out_path else ""),
    )
    if out_path is not None:
        save_reference_stats(out_path, stats)
    return stats


def save_reference_stats(path: str | Path, stats: ReferenceStats) -> Path:
    path = Path(path)
    tensors = {
        "mu": torch.from_numpy(stats.mu),
        "sigma": torch.from_numpy(stats.sigma),
        "pr_features": stats.pr_features,
        "pr_radii": stats.pr_radii,
    }
    if stats.spatial_mu is not None and stats.spatial_sigma is not None:
        tensors["spatial_mu"] = torch.from_numpy(stats.spatial_mu)
        tensors["spatial_sigma"] = torch.from_numpy(stats.spatial_sigma)
    sidecar = {
        "format": "dkdm-reference-stats",
        "version": FORMAT_VERSION,
        "name": stats.name,
        "feature_space": stats.feature_space,
        "count": stats.count,
        "input_sha256": stats.input_hash,
        "feature_dim": int(stats.mu.shape[0]),
        "pr_count": int(stats.pr_features.shape[0]),
        "pr_k": stats.k,
        "has_spatial": "spatial_mu" in tensors,
    }
    save_tensors_with_sidecar(path, tensors, sidecar)
    return path


def load_reference_stats(path: str | Path, *, expected_space: str | None = None) -> ReferenceStats:
    """Read an artifact written by `save_reference_stats`; with `expected_space`, refuse any other space."""
    path = Path(path)
    tensors, meta = load_tensors_with_sidecar(path, "reference statistics")
    if meta.get("format") != "dkdm-reference-stats" or meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: not dkdm reference statistics v{FORMAT_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    missing = {"mu", "sigma", "pr_features", "pr_radii"} - tensors.keys()
    if missing:
        raise ValueError(f"{path}: missing tensors {', '.join(sorted(missing))}")
    if tensors["mu"].shape[0] != meta["feature_dim"] or tensors["pr_features"].shape[0] != meta["pr_count"]:
        raise ValueError(f"{path}: tensors do not match the sidecar's sizes (mixed-up pair?)")
    stats = ReferenceStats(
        feature_space=meta["feature_space"],
        count=int(meta["count"]),
        input_hash=meta["input_sha256"],
        mu=tensors["mu"].double().numpy(),
        sigma=tensors["sigma"].double().numpy(),
        pr_features=tensors["pr_features"].float(),
        pr_radii=tensors["pr_radii"].float(),
        k=int(meta["pr_k"]),
        spatial_mu=tensors["spatial_mu"].double().numpy() if "spatial_mu" in tensors else None,
        spatial_sigma=tensors["spatial_sigma"].double().numpy() if "spatial_sigma" in tensors else None,
        name=meta.get("name") or path.stem,
    )
    if expected_space is not None:
        stats.require_space(expected_space, what=f"reference statistics {path}")
    return stats
