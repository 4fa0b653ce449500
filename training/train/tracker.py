"""The tiny tracking protocol the trainer reports through; the platform passes an MLflow-backed one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...


class NullTracker:
    """Discards everything (non-zero ranks, library use without tracking)."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass


@dataclass
class ListTracker:
    """Keeps every call in lists; for tests and notebooks."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(Path(path))

    def series(self, name: str) -> list[tuple[int, float]]:
        """All (step, value) pairs logged for one metric name."""
        return [(step, m[name]) for step, m in self.metrics if name in m]
