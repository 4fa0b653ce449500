"""Training the `learned` feature network on the real training images: a classifier when there are labels,
contrastive otherwise. Seeded: the same images, seed and thread count give the same weights on the CPU."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.data.dataset import check_images_uint8
from training.eval.artifacts import save_tensors_with_sidecar
from training.eval.learned import (
    ARCHITECTURE,
    LearnedConfig,
    LearnedNet,
    config_to_json,
    space_name,
    to_nchw,
)

HELD_OUT_FRACTION = 0.1
# NT-Xent temperature. 0.5 (SimCLR's value for small batches) gave the feature space most sensitive to the four
# disturbances on the generated 16x16 set: at 0.1 and 0.2 the strongest blur stayed near the noise floor.
TEMPERATURE = 0.5


@dataclass(frozen=True)
class LearnedReport:
    path: Path
    space: str
    objective: str
    num_classes: int
    n_train: int
    n_held_out: int
    held_out_score: float | None  # classifier: accuracy; contrastive: how often a view's nearest neighbour is its twin
    train_seconds: float


def random_shift(x: Tensor, generator: torch.Generator, max_shift: int) -> Tensor:
    """Translate each image by up to `max_shift` px (edges replicated): small images tolerate nothing stronger
    without changing what they show, and colour or blur augmentations would teach the network to ignore exactly
    the defects FD has to see."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _class_indices(labels: np.ndarray | None, n: int) -> tuple[Tensor | None, int]:
    """Labels as 0..K-1 (any integer or string values), or None when there are no labels or only one class."""
    if labels is None:
        return None, 0
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{labels.shape[0] if labels.ndim else 0} labels for {n} images")
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return None, 0
    return torch.as_tensor(index, dtype=torch.int64), len(classes)


def _views(x: Tensor, generator: torch.Generator, max_shift: int) -> Tensor:
    return LearnedNet.preprocess(
        torch.cat([random_shift(x, generator, max_shift), random_shift(x, generator, max_shift)]))


def _contrastive_logits(model: LearnedNet, views: Tensor) -> tuple[Tensor, Tensor]:
    """Similarities of each view to every other view, and the index of its twin (the positive)."""
    z = F.normalize(model.project(model.features(views)), dim=1)
    sim = (z @ z.T / TEMPERATURE).fill_diagonal_(float("-inf"))
    n = views.shape[0] // 2
    return sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)])


def _loss(model: LearnedNet, x: Tensor, y: Tensor | None, generator: torch.Generator, max_shift: int) -> Tensor:
    if y is None:
        return F.cross_entropy(*_contrastive_logits(model, _views(x, generator, max_shift)))
    shifted = LearnedNet.preprocess(random_shift(x, generator, max_shift))
    return F.cross_entropy(model.logits(model.features(shifted)), y)


def _held_out_score(model: LearnedNet, x: Tensor, y: Tensor | None, generator: torch.Generator,
                    max_shift: int) -> float | None:
    if len(x) < 2:
        return None
    model.eval()
    with torch.no_grad():
        if y is not None:
            return float((model.logits(model.features(LearnedNet.preprocess(x))).argmax(1) == y).float().mean())
        sim, twin = _contrastive_logits(model, _views(x, generator, max_shift))
        return float((sim.argmax(1) == twin).float().mean())


def train_learned_features(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    seed: int,
    epochs: int,
    out_path: str | Path,
    batch_size: int = 128,
    lr: float = 2e-3,
    feature_dim: int = 64,
    width: int = 32,
) -> LearnedReport:
    """Train on uint8 NHWC `images` and save `out_path` (.safetensors) + `.json` sidecar.

    A seeded 10% of the images is held out (never trained on) and scored: accuracy for a classifier; for the
    contrastive network, the share of shifted views whose nearest neighbour among all held-out views is their
    twin. Labels with a single class count as no labels.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    check_images_uint8(images, what="images for the learned feature network")
    n, size, _, channels = images.shape
    y_all, num_classes = _class_indices(labels, n)
    config = LearnedConfig(channels=channels, image_size=size, num_classes=num_classes, feature_dim=feature_dim,
                           width=width, objective="classifier" if y_all is not None else "contrastive")
    x_all = to_nchw(images, config)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_held = round(HELD_OUT_FRACTION * n) if n >= 20 else 0
    held, train = order[:n_held], order[n_held:]
    x_train, x_held = x_all[train], x_all[held]
    y_train, y_held = (y_all[train], y_all[held]) if y_all is not None else (None, None)

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # parameter init only, without touching the caller's global generator
        model = LearnedNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    max_shift = max(1, size // 8)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            loss = _loss(model, x_train[idx], y_train[idx] if y_train is not None else None, generator, max_shift)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    score = _held_out_score(model, x_held, y_held, generator, max_shift)
    seconds = time.perf_counter() - started
    model.eval()
    space = space_name(model)
    out_path = Path(out_path)
    save_tensors_with_sidecar(out_path, model.state_dict(), {
        "architecture": ARCHITECTURE, "feature_space": space, "config": config_to_json(config), "seed": seed,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "n_train": len(x_train), "n_held_out": n_held,
        "held_out_score": score, "train_seconds": seconds,
    })
    return LearnedReport(out_path, space, config.objective, num_classes, len(x_train), n_held, score, seconds)
