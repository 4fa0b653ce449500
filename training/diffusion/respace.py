"""Timestep respacing: which original steps a shorter process keeps, and the betas of that process."""
from __future__ import annotations

import numpy as np


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """Sorted original timesteps kept by a respacing spec.

    Forms: "" (keep all), "N", "a,b,c" (the T steps are split into equal sections, the first T % k one step
    longer, and section i keeps its count evenly), or "ddimN" (the integer stride s with
    len(range(0, T, s)) == N).
    """
    spec = str(spec).strip()
    if spec == "":
        return list(range(num_timesteps))
    if spec.startswith("ddim"):
        return _space_ddim(num_timesteps, spec)
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"bad timestep_respacing {spec!r}: expected 'N', 'a,b,c' or 'ddimN' with integers"
        ) from None
    if any(c < 1 for c in counts):
        raise ValueError(f"bad timestep_respacing {spec!r}: every count must be >= 1")

    section_size, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = section_size + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"bad timestep_respacing {spec!r}: section {i} has {size} steps, cannot keep {count}"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulating the float stride and rounding half-to-even (Python's round) is the reference rule;
        # closed forms such as round(i * stride) pick different steps for some counts.
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(kept))


def _space_ddim(num_timesteps: int, spec: str) -> list[int]:
    try:
        count = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"bad timestep_respacing {spec!r}: expected 'ddimN' with an integer N") from None
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"bad timestep_respacing {spec!r}: no integer stride gives exactly {count} of {num_timesteps} "
                     "steps")


def respaced_betas(alphas_cumprod: np.ndarray, kept: list[int]) -> np.ndarray:
    """Betas of the process that jumps between the kept steps, so its alphas_cumprod equal the originals there."""
    kept_acp = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(kept)]
    previous = np.append(1.0, kept_acp[:-1])
    return 1.0 - kept_acp / previous
