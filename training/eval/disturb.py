"""The image disturbances Heusel et al. (2017) used to check that FID tracks quality, on uint8 NHWC images.

Each takes a strength and a seed. For a fixed seed the random draws do not depend on the strength (the same
noise field scaled, the same corrupted pixels kept as the rate grows, the same images swapped in first), so a
stronger level is the weaker one made worse, not a fresh sample: a monotonicity check then measures the
disturbance, not sampling luck.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.data.dataset import check_images_uint8


def gaussian_noise(images: np.ndarray, sigma: float, *, seed: int) -> np.ndarray:
    """Add N(0, sigma²) per pixel (sigma in 0..255 units), clipped to the uint8 range."""
    check_images_uint8(images, what="images to disturb")
    z = np.random.default_rng(seed).standard_normal(images.shape)
    return np.clip(images + sigma * z, 0, 255).round().astype(np.uint8)


def gaussian_blur(images: np.ndarray, sigma: float, *, seed: int = 0) -> np.ndarray:
    """Blur each channel with a Gaussian of standard deviation `sigma` px (edges reflected); `seed` is unused."""
    check_images_uint8(images, what="images to disturb")
    if sigma <= 0:
        return images.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).float()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1)  # reflect padding needs pad < size; beyond that the edge repeats
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if radius > pad:
        x = F.pad(x, (radius - pad,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def salt_and_pepper(images: np.ndarray, rate: float, *, seed: int) -> np.ndarray:
    """Set a `rate` fraction of pixels (all channels of a pixel together) to black or white, half each."""
    check_images_uint8(images, what="images to disturb")
    rng = np.random.default_rng(seed)
    u = rng.random(images.shape[:3])
    white = rng.random(images.shape[:3]) < 0.5
    out = images.copy()
    hit = u < rate
    out[hit & white] = 255
    out[hit & ~white] = 0
    return out


def mix_in(images: np.ndarray, other: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """Replace a `fraction` of `images` (chosen by `seed`) by images of `other`, a different distribution."""
    check_images_uint8(images, what="images to disturb")
    check_images_uint8(other, what="images mixed in")
    if other.shape[1:] != images.shape[1:]:
        raise ValueError(f"images to mix in are {other.shape[1:]}, the set is {images.shape[1:]}")
    count = round(fraction * len(images))
    if count > len(other):
        raise ValueError(f"mixing in {count} images needs that many, got {len(other)}")
    rng = np.random.default_rng(seed)
    slots = rng.permutation(len(images))[:count]
    out = images.copy()
    out[slots] = other[rng.permutation(len(other))[:count]]
    return out


DISTURBANCES = {"gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "salt_and_pepper": salt_and_pepper}
# Four strengths of each disturbance (uint8 units for noise, px for blur, pixel rate, image fraction), spaced
# roughly geometrically like Heusel et al.'s, from barely visible to severe.
LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (8.0, 16.0, 32.0, 64.0),
    "gaussian_blur": (0.5, 1.0, 1.5, 2.0),
    "salt_and_pepper": (0.02, 0.05, 0.1, 0.2),
    "mix_in": (0.1, 0.25, 0.5, 0.75),
}


def disturbance_curves(images: np.ndarray, other: np.ndarray, fd_of, *, seed: int = 0) -> dict[str, list[float]]:
    """FD of `images` disturbed at strength 0 and each of LEVELS, per disturbance; `fd_of(images) -> float`
    scores a set (against the statistics of the undisturbed set, as Heusel et al. did) and `other` is the
    different distribution mixed in."""
    clean = fd_of(images)
    curves = {}
    for name, levels in LEVELS.items():
        if name == "mix_in":
            scores = [fd_of(mix_in(images, other, level, seed=seed)) for level in levels]
        else:
            scores = [fd_of(DISTURBANCES[name](images, level, seed=seed)) for level in levels]
        curves[name] = [clean, *scores]
    return curves
