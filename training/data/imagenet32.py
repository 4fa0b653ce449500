"""Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017), npz batches as distributed.

`train_data_batch_1.npz` .. `train_data_batch_10.npz` and `val_data.npz`; each holds `data`
(uint8 N×3072, channel-planar R, G, B rows of 32×32) and `labels` (1..1000).
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from training.data.dataset import ImageDataset, require_dir

SIDE = 32
_TRAIN_PATTERN = re.compile(r"train_data_batch_(\d+)\.npz$")


def read_imagenet32_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → (uint8 N×32×32×3, int64 labels in 0..999)."""
    try:
        with np.load(path, allow_pickle=False) as batch:
            keys = list(batch.keys())
            if "data" not in keys:
                raise ValueError(f"{path}: no 'data' array (keys: {', '.join(keys)}); not an ImageNet-32 batch")
            data = batch["data"]
            labels = batch["labels"] if "labels" in keys else None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise ValueError(f"{path}: 'data' should be uint8 N×{3 * SIDE * SIDE}, got {data.dtype} {data.shape}")
    images = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    if labels is None:
        return images, np.full(len(images), -1, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels - 1  # the files count classes from 1


def load_imagenet32(root: Path | str, split: str = "train", *, limit: int | None = None) -> ImageDataset:
    if split not in ("train", "val"):
        raise ValueError(f"imagenet32: unknown split {split!r}; expected 'train' or 'val'")
    root = require_dir(Path(root), "ImageNet-32 root")
    if split == "train":
        files = sorted(
            (p for p in root.rglob("train_data_batch_*.npz") if _TRAIN_PATTERN.search(p.name)),
            key=lambda p: int(_TRAIN_PATTERN.search(p.name).group(1)),
        )
    else:
        files = sorted(root.rglob("val_data.npz"))
    if not files:
        wanted = "train_data_batch_<i>.npz" if split == "train" else "val_data.npz"
        raise FileNotFoundError(f"no ImageNet-32 {split} files ({wanted}) under {root}")
    images, labels, total = [], [], 0
    for path in files:
        im, lab = read_imagenet32_batch(path)
        images.append(im)
        labels.append(lab)
        total += len(im)
        if limit is not None and total >= limit:
            break
    all_images = np.concatenate(images)[:limit]
    return ImageDataset(
        name="imagenet32",
        images=all_images,
        labels=np.concatenate(labels)[:limit],
        source=str(root),
        meta={"split": split, "files": str(len(images))},
    )
