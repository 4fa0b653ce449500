"""scikit-learn's bundled handwritten digits (1,797 images, 8×8, one channel): the embedded default dataset."""
from __future__ import annotations

import numpy as np

from training.data.dataset import ImageDataset

DIGITS_SPLITS = ("all", "train", "test")
# A fixed split so the feature classifier's test accuracy is measured on images it never saw;
# the diffusion teacher and the reference statistics use "train" (or "all"), never "test" for both.
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """scikit-learn stores intensities 0..16; scale them to 0..255 with rounding (16 ↦ 255)."""
    return np.rint(np.asarray(values, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)


def load_digits(split: str = "all") -> ImageDataset:
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; expected one of {', '.join(DIGITS_SPLITS)}")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = digits_to_uint8(bunch.images)[..., None]
    labels = bunch.target.astype(np.int64)
    if split != "all":
        index = np.arange(len(images))
        train_idx, test_idx = train_test_split(
            index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
        )
        chosen = np.sort(train_idx if split == "train" else test_idx)
        images, labels = images[chosen], labels[chosen]
    return ImageDataset(
        name="digits",
        images=np.ascontiguousarray(images),
        labels=labels,
        source="sklearn.datasets.load_digits",
        meta={"split": split},
    )
