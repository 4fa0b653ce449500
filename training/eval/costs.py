"""The paper's cost figures: generation time for 256 images (Fig. 6), images/s at 50 steps,
training seconds per 100 iterations (Table 9), peak memory (Fig. 7), and the device they ran on."""
from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.eval.sampling import generate_samples

GEN_IMAGES = 256
PAPER_STEPS = 50


@dataclass(frozen=True)
class CostFigures:
    device_name: str
    gen_seconds_256: float | None = None
    images_per_second_50steps: float | None = None
    train_seconds_per_100_iters: float | None = None
    peak_memory_mb: float | None = None

    def metrics(self) -> dict[str, float]:
        """The numeric figures under their contract names (`device_name` is a tag, not a metric)."""
        names = ("gen_seconds_256", "images_per_second_50steps", "train_seconds_per_100_iters", "peak_memory_mb")
        return {name: float(getattr(self, name)) for name in names if getattr(self, name) is not None}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"cpu: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak window. On CPU (Linux) this resets the process's RSS high-water mark."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    clear_refs = Path("/proc/self/clear_refs")
    try:
        clear_refs.write_text("5")  # "5" resets VmHWM (see proc(5)); elsewhere the peak is process-lifetime
    except OSError:
        pass


def peak_memory_mb(device: torch.device | str) -> float:
    """CUDA: max memory allocated by tensors. CPU: the process's peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def measure_generation(
    model: nn.Module,
    diffusion: Any,
    *,
    batch_size: int,
    device: torch.device | str,
    seed: int = 0,
    use_ddim: bool = False,
    amp: bool = False,
    **shape: int,
) -> dict[str, float]:
    """Wall seconds for 256 samples with `diffusion`'s steps; images/s too when that is the paper's 50.

    `amp` samples in float16 on CUDA, as the paper does.
    """
    device = torch.device(device)
    # One short untimed run first, so one-time costs (CUDA context, kernel selection) are not counted.
    generate_samples(model, diffusion, 1, batch_size=1, seed=seed, device=device, use_ddim=use_ddim,
                     amp=amp, progress=False, **shape)
    _synchronize(device)
    start = time.perf_counter()
    generate_samples(model, diffusion, GEN_IMAGES, batch_size=batch_size, seed=seed, device=device,
                     use_ddim=use_ddim, amp=amp, progress=False, **shape)
    _synchronize(device)
    seconds = time.perf_counter() - start
    figures = {"gen_seconds_256": seconds}
    if diffusion.num_timesteps == PAPER_STEPS:
        figures["images_per_second_50steps"] = GEN_IMAGES / seconds
    return figures


def seconds_per_100_iterations(
    step: Callable[[], object], *, iterations: int = 100, warmup: int = 3, device: torch.device | str = "cpu"
) -> float:
    """Time `iterations` calls of a training step (after `warmup` untimed ones), scaled to 100."""
    if iterations < 1:
        raise ValueError(f"iterations must be positive, got {iterations}")
    device = torch.device(device)
    for _ in range(warmup):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) * 100.0 / iterations
