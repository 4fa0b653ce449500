"""One entry point: a dataset by name (digits, cifar10, celeba64, imagenet32) or by path (folder / .npz)."""
from __future__ import annotations

from pathlib import Path

from training.data.celeba import load_celeba64
from training.data.cifar10 import load_cifar10
from training.data.dataset import ImageDataset
from training.data.digits import load_digits
from training.data.folders import load_image_folder, load_npz
from training.data.imagenet32 import load_imagenet32

DATASET_NAMES = ("digits", "cifar10", "celeba64", "imagenet32")
_NATIVE_SIZE = {"digits": 8, "cifar10": 32, "celeba64": 64, "imagenet32": 32}


def load_dataset(
    name_or_path: str | Path,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    split: str = "train",
    limit: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load a named dataset (its files under `root`) or any image folder / ADM `.npz` given by path.

    `split` applies to the named datasets (digits: all/train/test; cifar10: train/test;
    imagenet32: train/val; celeba64 has one). `image_size` must match a named dataset's native size
    (celeba64 is resized to it); for a path, images
    are brought to it by `to_square` (non-square ones centre-cropped first, then resized). `channels` (1 or 3)
    converts an image folder's files on reading (default 3) and is checked against anything else.
    """
    data = _load(name_or_path, root=root, image_size=image_size, split=split, limit=limit, channels=channels)
    if channels is not None and data.channels != channels:
        raise ValueError(f"dataset {data.name!r} ({data.source}) has {data.channels} channels, not {channels}")
    return data


def _load(
    name_or_path: str | Path,
    *,
    root: str | Path | None,
    image_size: int | None,
    split: str,
    limit: int | None,
    channels: int | None,
) -> ImageDataset:
    key = str(name_or_path)
    if key in DATASET_NAMES:
        if image_size is not None and key != "celeba64" and image_size != _NATIVE_SIZE[key]:
            raise ValueError(f"{key}: image_size {image_size} differs from its native {_NATIVE_SIZE[key]}")
        if key == "digits":
            data = load_digits(split)
            return data if limit is None else _head(data, limit)
        if root is None:
            raise ValueError(f"{key}: pass root, the folder holding its extracted files")
        if key == "cifar10":
            data = load_cifar10(root, split)
            return data if limit is None else _head(data, limit)
        if key == "celeba64":
            return load_celeba64(root, image_size or 64, limit=limit)
        return load_imagenet32(root, split, limit=limit)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {key!r} is neither a known name ({', '.join(DATASET_NAMES)}) nor an existing path"
        )
    if path.is_dir():
        return load_image_folder(path, image_size, channels=channels or 3, limit=limit)
    if path.suffix.lower() == ".npz":
        data = load_npz(path, image_size)
        return data if limit is None else _head(data, limit)
    raise ValueError(f"dataset path {path} is neither a folder of images nor an .npz file")


def _head(data: ImageDataset, limit: int) -> ImageDataset:
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return ImageDataset(
        name=data.name,
        images=data.images[:limit],
        labels=None if data.labels is None else data.labels[:limit],
        source=data.source,
        meta=data.meta,
    )
