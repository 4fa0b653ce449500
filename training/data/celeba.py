"""CelebA-64 as DDPM-IP and the paper build it: every `img_align_celeba` image squashed to 64×64."""
from __future__ import annotations

from pathlib import Path

from training.data.dataset import ImageDataset
from training.data.folders import load_image_folder

CELEBA_FOLDER = "img_align_celeba"


def find_celeba_dir(root: Path) -> Path:
    root = Path(root)
    nested = root / CELEBA_FOLDER
    return nested if nested.is_dir() else root


def load_celeba64(
    root: Path | str, image_size: int = 64, *, limit: int | None = None, workers: int | None = None
) -> ImageDataset:
    """All 202,599 aligned 178×218 JPEGs resized straight to image_size² (no crop, so faces are squashed).

    The resize is cv2's INTER_LINEAR equivalent (`bilinear-cv2`), the one DDPM-IP used for the
    paper's reference batch; CelebA has no split here because the paper evaluates against all of it.
    """
    folder = find_celeba_dir(Path(root))
    data = load_image_folder(
        folder, image_size, channels=3, resample="bilinear-cv2", limit=limit, workers=workers, name="celeba64",
        crop=False,
    )
    return ImageDataset(
        name="celeba64", images=data.images, source=data.source,
        meta={"format": "image-folder", "resample": "bilinear-cv2"},
    )
