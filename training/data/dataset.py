"""The in-memory image set every loader returns, and the one conversion to the model's range."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class ImageDataset:
    """uint8 images in NHWC layout (C is 1 or 3), with integer labels when the source has them."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    source: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_images_uint8(self.images, what=f"dataset {self.name!r}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.labels)} labels for {len(self.images)} images"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def to_model_range(self) -> torch.Tensor:
        return to_model_range(self.images)


def check_images_uint8(images: np.ndarray, *, what: str) -> None:
    """Raise one clear ValueError unless `images` is a non-empty uint8 N×H×W×C array with C in {1, 3}."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{what}: expected a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"{what}: expected dtype uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"{what}: expected shape N×H×W×C with C in (1, 3), got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: contains no images")


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float32 NCHW in [-1, 1] (0 ↦ -1, 255 ↦ 1), the range the diffusion models work in."""
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"to_model_range expects uint8 N×H×W×C images, got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).to(torch.float32).div(127.5).sub(1.0).contiguous()


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] → uint8 NHWC.

    Truncates after scaling (`((x + 1) * 127.5).clamp(0, 255)` cast to uint8) as ADM's sampling
    script does, so sample files are byte-comparable with the paper's protocol.
    """
    if x.ndim != 4:
        raise ValueError(f"from_model_range expects N×C×H×W, got {tuple(x.shape)}")
    y = ((x.detach().float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{what} is not a directory: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} is not a file: {path}")
    return path
