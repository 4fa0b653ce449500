"""Stage `data`: the profile's dataset through its real loader, frozen as one uint8 NHWC .npz (DVC out).

It is also the first stage of `dvc repro`, so it checks what later stages will need (a teacher .pt for import
profiles, Inception weights) and fails before any work is done.
"""
from __future__ import annotations

import numpy as np

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.settings import Settings
from dkdm.stages.common import DATA_FILE, DATA_INFO, write_json


def preflight(settings: Settings) -> None:
    """Files the whole pipeline needs, checked up front (one line each, nothing written)."""
    from training.models.diffusers_io import is_diffusers_path

    checkpoint = settings.teacher.checkpoint
    if settings.teacher.source == "import" and not (checkpoint.is_file() or is_diffusers_path(checkpoint)):
        raise DkdmError(f"teacher.checkpoint: file {str(checkpoint)!r} does not exist (put the teacher .pt or "
                        "diffusers folder there or change teacher.checkpoint)")
    if settings.features.kind == "inception":
        from training.eval.inception import resolve_weights_path

        resolve_weights_path(settings.features.inception_weights)  # raises naming where to put the weights
    if settings.data.dataset in ("folder", "npz", "cifar10", "celeba64", "imagenet32"):
        if not settings.data.path.exists():
            raise DkdmError(f"data.path: {str(settings.data.path)!r} does not exist (dataset "
                            f"{settings.data.dataset!r} is read from there; nothing is downloaded)")


def load(settings: Settings):
    from training.data import load_dataset

    data = settings.data
    name_or_path = data.path if data.dataset in ("folder", "npz") else data.dataset
    root = data.path if data.dataset not in ("digits", "folder", "npz") else None
    dataset = load_dataset(name_or_path, root=root, image_size=data.image_size, split=data.split, limit=data.limit)
    if dataset.channels != data.channels or dataset.image_size != data.image_size:
        raise DkdmError(f"data.channels/image_size: the dataset has {dataset.channels}x{dataset.image_size}x"
                        f"{dataset.image_size} images, the profile says "
                        f"{data.channels}x{data.image_size}x{data.image_size}")
    return dataset


def run(ctx: Context) -> None:
    settings = ctx.settings
    preflight(settings)
    dataset = load(settings)
    arrays = {"arr_0": dataset.images}
    if dataset.labels is not None:
        arrays["arr_1"] = dataset.labels
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = DATA_FILE.with_name(".dataset.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(DATA_FILE)
    write_json(DATA_INFO, {"name": dataset.name, "count": len(dataset), "image_size": dataset.image_size,
                           "channels": dataset.channels, "source": dataset.source, "meta": dataset.meta,
                           "has_labels": dataset.labels is not None})
    summary(f"data: {len(dataset)} {dataset.name} images {dataset.channels}x{dataset.image_size}x"
            f"{dataset.image_size} -> {DATA_FILE} ({ctx.elapsed():.1f}s)")
