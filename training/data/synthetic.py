"""Generated image sets with known structure, for tests and examples that need data nobody has to download.

`shapes`: a soft colour gradient with one or two filled discs or squares of random colour, place and size.
`gratings`: sinusoidal stripes of random orientation, frequency and colours: a different distribution of the
same size, for the "swap in images from elsewhere" disturbance.
"""
from __future__ import annotations

import numpy as np


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="ij")


def shapes(n: int, size: int = 16, *, seed: int, channels: int = 3) -> np.ndarray:
    """uint8 n×size×size×channels images of discs and squares on gradients."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    out = np.empty((n, size, size, channels), np.float64)
    for i in range(n):
        top, bottom = rng.uniform(0.1, 0.5, channels), rng.uniform(0.1, 0.5, channels)
        image = top + (bottom - top) * yy[..., None]
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.2, 0.8, 2)
            radius = rng.uniform(0.12, 0.3)
            if rng.random() < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            else:
                mask = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
            image[mask] = rng.uniform(0.55, 1.0, channels)
        out[i] = image
    return np.clip(out * 255, 0, 255).round().astype(np.uint8)


def gratings(n: int, size: int = 16, *, seed: int, channels: int = 3) -> np.ndarray:
    """uint8 n×size×size×channels sinusoidal stripe images."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    out = np.empty((n, size, size, channels), np.float64)
    for i in range(n):
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        low, high = rng.uniform(0.0, 0.4, channels), rng.uniform(0.6, 1.0, channels)
        out[i] = low + (high - low) * wave[..., None]
    return np.clip(out * 255, 0, 255).round().astype(np.uint8)
