"""Bring-your-own data: a folder of PNG/JPEG images, or an ADM-style `.npz` (uint8 NHWC under `arr_0`)."""
from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from training.data.dataset import ImageDataset, check_images_uint8, require_dir, require_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESAMPLE_METHODS = ("bicubic", "bilinear", "lanczos", "box", "nearest", "bilinear-cv2")
_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


def list_images(folder: Path) -> list[Path]:
    """All PNG/JPEG files below `folder`, in a stable order (sorted relative paths)."""
    folder = require_dir(Path(folder), "image folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def resize_square(image: np.ndarray, size: int, method: str) -> np.ndarray:
    """Resize one uint8 H×W×C image straight to size×size (aspect ratio not kept: no crop)."""
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"unknown resample method {method!r}; expected one of {', '.join(RESAMPLE_METHODS)}")
    if image.shape[0] == size and image.shape[1] == size:
        return image
    if method == "bilinear-cv2":
        # cv2.INTER_LINEAR (what DDPM-IP used for CelebA-64): half-pixel centres and no antialiasing
        # when shrinking. Pillow's bilinear filter antialiases, which changes the reference statistics.
        x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    mode = "L" if image.shape[2] == 1 else "RGB"
    pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode)
    out = np.asarray(pil.resize((size, size), _PIL_FILTERS[method]), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def center_crop(image: np.ndarray) -> np.ndarray:
    """The centred min(H, W) square of an H×W×C image (the odd pixel of an odd difference goes to the bottom/right)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def to_square(image: np.ndarray, size: int, method: str, *, crop: bool = True) -> np.ndarray:
    """The one rule for bring-your-own images: a non-square image is centre-cropped to a square (as ADM's
    image datasets are), then resized to size×size; `crop=False` squashes instead (CelebA-64's protocol)."""
    return resize_square(center_crop(image) if crop else image, size, method)


def read_image(path: Path, *, channels: int, size: int | None, method: str, crop: bool = True) -> np.ndarray:
    try:
        with Image.open(path) as pil:
            pil = pil.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(pil, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as an image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr if size is None else to_square(arr, size, method, crop=crop)


def load_image_folder(
    folder: Path | str,
    image_size: int | None = None,
    *,
    channels: int = 3,
    resample: str = "bicubic",
    limit: int | None = None,
    workers: int | None = None,
    name: str | None = None,
    crop: bool = True,
) -> ImageDataset:
    """Every image below `folder` as image_size×image_size: non-square ones centre-cropped first (`to_square`).

    Without `image_size` all images must already share one size.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if resample not in RESAMPLE_METHODS:
        raise ValueError(f"unknown resample method {resample!r}; expected one of {', '.join(RESAMPLE_METHODS)}")
    folder = Path(folder)
    files = list_images(folder)
    if limit is not None:
        files = files[:limit]
    workers = workers or min(8, os.cpu_count() or 1)
    # Pillow releases the GIL while decoding, so threads help on large folders such as CelebA.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(lambda p: read_image(p, channels=channels, size=image_size, method=resample, crop=crop),
                               files))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"image folder {folder} mixes sizes {sorted(shapes)[:3]}...: pass image_size to resize them"
        )
    labels, classes = class_labels(folder, files)
    meta = {"format": "image-folder", "resample": resample if image_size else "none",
            "non_square": "center-crop" if crop else "squash"}
    if classes:
        meta["classes"] = ",".join(classes)
    return ImageDataset(
        name=name or folder.name,
        images=np.stack(images),
        labels=labels,
        source=str(folder),
        meta=meta,
    )


def class_labels(folder: Path, files: list[Path]) -> tuple[np.ndarray | None, list[str]]:
    """Labels from class subfolders (`folder/<class>/<image>`, ImageFolder's layout): only when every image sits
    exactly one level down and there are at least two classes; otherwise the folder is unlabelled."""
    parents = [p.relative_to(folder).parts for p in files]
    if any(len(parts) != 2 for parts in parents):
        return None, []
    classes = sorted({parts[0] for parts in parents})
    if len(classes) < 2:
        return None, []
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[parts[0]] for parts in parents], dtype=np.int64), classes


def load_npz(path: Path | str, image_size: int | None = None, *, resample: str = "bicubic") -> ImageDataset:
    """An ADM-style sample/reference batch: uint8 N×H×W×C under `arr_0` (labels under `arr_1` if present)."""
    path = require_file(Path(path), "npz file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive with 'arr_0'")
    with data:
        keys = list(data.keys())
        if "arr_0" not in keys:
            raise ValueError(f"{path}: no 'arr_0' array (keys: {', '.join(keys) or 'none'}); expected ADM format")
        try:
            images = data["arr_0"]
            labels = data["arr_1"].astype(np.int64) if "arr_1" in keys else None
        except (ValueError, zipfile.BadZipFile) as exc:  # object arrays would need pickle: refused
            raise ValueError(f"{path}: cannot read arrays ({exc})") from None
    check_images_uint8(images, what=f"{path} arr_0")
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        images = np.stack([to_square(im, image_size, resample) for im in images])
    return ImageDataset(
        name=path.stem,
        images=np.ascontiguousarray(images),
        labels=labels,
        source=str(path),
        meta={"format": "npz", "non_square": "center-crop"},
    )
