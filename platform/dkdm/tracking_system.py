"""System metrics (CPU, memory, disk, network, GPU when present) sampled on a thread and sent like any metric.

MLflow's own sampler talks to the server itself and stops for good at the first failed request, so one outage
ended a run's system metrics. Here MLflow's collectors only measure; the samples go through the run's delivery
queue, which keeps them through an outage and sends (or spools) them in order, like the training metrics.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "system/"


class SystemSampler:
    """Every `interval_s`, one aggregated sample as `system/<name>` metrics at consecutive steps from `first_step`."""

    def __init__(self, tracker: Any, interval_s: float, *, first_step: int = 0) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Built for its collectors only (never started): it picks the GPU monitor that fits this machine.
        self._collectors = SystemMetricsMonitor("", sampling_interval=interval_s).monitors
        self._tracker = tracker
        self._interval_s = interval_s
        self.step = first_step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dkdm-system-metrics", daemon=True)

    def start(self) -> SystemSampler:
        self._collect()  # a run shorter than one interval still gets one sample
        self._thread.start()
        return self

    def _collect(self) -> None:
        for collector in self._collectors:
            collector.collect_metrics()

    def _publish(self) -> None:
        metrics: dict[str, float] = {}
        for collector in self._collectors:
            metrics.update(collector.aggregate_metrics())
            collector.clear_metrics()
        if metrics:
            self._tracker.log_metrics({PREFIX + k: float(v) for k, v in metrics.items()}, self.step)
            self.step += 1

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._collect()
                self._publish()
            except Exception as err:  # noqa: BLE001 - a collector failing must not end the run
                log.warning("tracking: a system-metrics sample failed (%s)", err)

    def stop(self) -> None:
        """Stop, publishing the samples of the last, unfinished interval."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self._collect()
            self._publish()
        except Exception as err:  # noqa: BLE001
            log.warning("tracking: the last system-metrics sample failed (%s)", err)


def first_system_step(logged: dict[str, set[int]]) -> int:
    """The step after the last system sample a reattached run holds (0 for a new run)."""
    steps = [max(s) for k, s in logged.items() if k.startswith(PREFIX) and s]
    return max(steps) + 1 if steps else 0


def start_sampler(tracker: Any, interval_s: float, logged: dict[str, set[int]]) -> SystemSampler | None:
    try:
        return SystemSampler(tracker, interval_s, first_step=first_system_step(logged)).start()
    except Exception as err:  # noqa: BLE001 - psutil missing or an old MLflow: tracking goes on without it
        # One line: a database error's text goes on with the whole SQL statement.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("tracking: system metrics unavailable (%s)", first)
        return None
