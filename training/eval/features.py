"""The offline feature space for the digits profile: a small CNN trained on scikit-learn digits.

Scores in this space are named `fd_digits`, `is_digits`, ... (never FID): the network is ours,
trained in the pipeline, and its `space` string carries a hash of its weights, so statistics
computed with one classifier are refused by another.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data.dataset import check_images_uint8
from training.eval.artifacts import load_tensors_with_sidecar, save_tensors_with_sidecar
from training.eval.extractor import DIGITS_METRICS, Features, MetricNames, extract_batched

ARCHITECTURE = "digits-cnn-v1"
FEATURE_DIM = 64
NUM_CLASSES = 10
IMAGE_SIZE = 8


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions on 8×8×1, a 64-d embedding, a 10-way head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.embed = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    @staticmethod
    def preprocess(images_nchw_uint8: Tensor) -> Tensor:
        return images_nchw_uint8.float().div(255.0).sub(0.5).div(0.5)

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        # The embedding is taken before its ReLU: denser and closer to Gaussian, which FD assumes.
        feats = self.embed(h.flatten(1))
        return feats, self.head(F.relu(feats))

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[1]


def weights_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_sidecar_space(path: str | Path, meta: dict, space: str) -> None:
    """The sidecar's feature space must be the one the loaded weights hash to (a mismatched pair is refused)."""
    if meta.get("feature_space") != space:
        raise ValueError(
            f"{path}: sidecar says feature space {meta.get('feature_space')!r} but the weights hash to "
            f"{space!r}; the pair is inconsistent"
        )


def _nchw(images: np.ndarray) -> Tensor:
    check_images_uint8(images, what="digits images")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ValueError(f"the digits classifier takes 8×8×1 images, got {images.shape[1:]}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _random_shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Shift each image by up to one pixel: the set has 1.4k training images, so a little augmentation helps."""
    padded = F.pad(x, (1, 1, 1, 1))
    shifted = torch.stack(
        [padded[:, :, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE] for dy in range(3) for dx in range(3)]
    )
    choice = torch.randint(0, 9, (x.shape[0],), generator=generator)
    return shifted[choice, torch.arange(x.shape[0])]


def accuracy(model: DigitsCNN, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(DigitsCNN.preprocess(_nchw(images)))
    return float((logits.argmax(1).numpy() == np.asarray(labels)).mean())


@dataclass(frozen=True)
class ClassifierReport:
    path: Path
    space: str
    train_accuracy: float
    test_accuracy: float
    n_train: int
    n_test: int


def train_digits_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    epochs: int,
    out_path: str | Path,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> ClassifierReport:
    """Train the feature network and save it as `out_path` (.safetensors) + `.json` sidecar.

    Without an explicit test set, a stratified 20% of `images` is held out (chosen by `seed`) and
    the accuracy on it is the reported test accuracy.
    """
    x_all, y_all = _nchw(images), torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(y_all) != len(x_all):
        raise ValueError(f"{len(y_all)} labels for {len(x_all)} images")
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if test_images is None:
        from sklearn.model_selection import train_test_split

        train_idx, test_idx = train_test_split(
            np.arange(len(x_all)), test_size=0.2, random_state=seed, stratify=y_all.numpy()
        )
        test_images, test_labels = images[test_idx], np.asarray(labels)[test_idx]
        x_train, y_train = x_all[train_idx], y_all[train_idx]
    else:
        x_train, y_train = x_all, y_all
    torch.manual_seed(seed)  # parameter init only; the data order below uses an explicit generator
    model = DigitsCNN()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = DigitsCNN.preprocess(_random_shift(x_train[idx], generator))
            loss = F.cross_entropy(model(batch), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    model.eval()
    train_acc = accuracy(model, x_train.permute(0, 2, 3, 1).numpy(), y_train.numpy())
    test_acc = accuracy(model, test_images, test_labels)
    space = f"{ARCHITECTURE}:{weights_fingerprint(model)}"
    out_path = Path(out_path)
    save_tensors_with_sidecar(
        out_path,
        model.state_dict(),
        {
            "architecture": ARCHITECTURE,
            "feature_space": space,
            "feature_dim": FEATURE_DIM,
            "seed": seed,
            "epochs": epochs,
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "n_train": int(len(x_train)),
            "n_test": int(len(test_images)),
        },
    )
    return ClassifierReport(out_path, space, train_acc, test_acc, int(len(x_train)), int(len(test_images)))


class DigitsFeatureExtractor:
    """64-d embeddings and 10-way logits of a trained DigitsCNN."""

    metric_names: MetricNames = DIGITS_METRICS

    def __init__(self, model: DigitsCNN, *, device: torch.device | str = "cpu", meta: dict | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.space = f"{ARCHITECTURE}:{weights_fingerprint(model)}"
        self.meta = meta or {}

    @classmethod
    def from_file(cls, path: str | Path, *, device: torch.device | str = "cpu") -> DigitsFeatureExtractor:
        tensors, meta = load_tensors_with_sidecar(Path(path), "digits classifier")
        if meta.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{path}: architecture {meta.get('architecture')!r}, expected {ARCHITECTURE!r}")
        model = DigitsCNN()
        try:
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"{path}: weights do not fit {ARCHITECTURE} ({first})") from None
        extractor = cls(model, device=device, meta=meta)
        check_sidecar_space(path, meta, extractor.space)
        return extractor

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor, None]:
        feats, logits = self.model.features_and_logits(DigitsCNN.preprocess(batch.to(self.device)))
        return feats, logits, None

    def extract(self, images: np.ndarray, *, batch_size: int = 512, progress: bool = False) -> Features:
        _nchw(images[:1])
        return extract_batched(images, self._forward, batch_size=batch_size, progress=progress, desc="digits features")
