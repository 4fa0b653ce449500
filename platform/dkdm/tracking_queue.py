"""Delivery of tracking records on a background thread, so a training step never waits for MLflow.

The caller only appends to an in-process queue. One worker thread delivers the records in order; when the
tracking server is unreachable it keeps them and retries, so an outage costs nothing but delay. What is still
undelivered when the run ends is written to a spool file (JSON lines) that `replay_spool` sends later.
"""
from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


@dataclass
class Record:
    """One unit of delivery. kind: metrics | params | tags | artifact | terminate."""

    kind: str
    payload: Any
    attempts: int = field(default=0, compare=False)


class DeliveryQueue:
    """Ordered, retrying, non-blocking delivery of `Record`s through `deliver(record)`.

    `deliver` raises on failure (server down); the record is then retried every `retry_interval_s`.
    Consecutive metric records are merged into batches, which is what makes the queue cheap at high rates.
    """

    def __init__(self, deliver: Callable[[Record], None], *, retry_interval_s: float = 2.0,
                 batch_interval_s: float = 0.0, name: str = "dkdm-tracking") -> None:
        self._deliver = deliver
        self._retry_interval_s = retry_interval_s
        # Waiting between deliveries lets records pile up into one request: the store's per-request CPU cost
        # (SQLAlchemy, HTTP) is then paid once a second instead of once a step, on cores training also needs.
        self._batch_interval_s = batch_interval_s
        self._closing = threading.Event()
        self._inbox: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._pending: list[Record] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.outages = 0
        self.delivered = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- caller side: never blocks on the network
    def put(self, record: Record) -> None:
        self._inbox.put(record)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + self._inbox.qsize()

    def close(self, timeout_s: float) -> list[Record]:
        """Deliver what is left for at most `timeout_s` seconds; return what could not be delivered."""
        deadline = time.monotonic() + timeout_s
        self._inbox.put(None)
        self._closing.set()
        self._wake.set()
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        with self._lock:
            left = list(self._pending)
            self._pending.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left.append(item)
        return left

    # -- worker side
    def _drain_inbox(self, block: bool) -> bool:
        """Move queued records to pending; False once the closing marker arrived."""
        open_ = True
        try:
            item = self._inbox.get(timeout=0.1) if block else self._inbox.get_nowait()
            while True:
                if item is None:
                    open_ = False
                else:
                    with self._lock:
                        self._pending.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        return open_

    def _next_batch(self) -> tuple[Record, int]:
        """The head record, with following metric records merged into it (up to the batch limit)."""
        with self._lock:
            head = self._pending[0]
            if head.kind != "metrics":
                return head, 1
            merged: list[Any] = list(head.payload)
            count = 1
            while (count < len(self._pending) and self._pending[count].kind == "metrics"
                   and len(merged) + len(self._pending[count].payload) <= MAX_METRICS_PER_BATCH):
                merged.extend(self._pending[count].payload)
                count += 1
        return Record("metrics", merged), count

    def _run(self) -> None:
        accepting = True
        while not self._stop.is_set():
            accepting = self._drain_inbox(block=not self._pending) and accepting
            if not self._pending:
                if not accepting:
                    return
                continue
            record, count = self._next_batch()
            try:
                self._deliver(record)
            except Exception as err:  # noqa: BLE001 - any failure means "try again later"
                if self.last_error is None:
                    self.outages += 1
                    log.warning("tracking server unavailable, buffering (%s)", str(err).splitlines()[0][:200])
                self.last_error = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                if not self._closing.is_set():
                    self._wake.wait(self._retry_interval_s)
                else:
                    time.sleep(min(self._retry_interval_s, 0.5))
                continue
            if self.last_error is not None:
                log.warning("tracking server back; delivering %d buffered records", self.pending())
            self.last_error = None
            with self._lock:
                del self._pending[:count]
            self.delivered += count
            if record.kind == "metrics" and self._batch_interval_s and not self._closing.is_set():
                self._wake.wait(self._batch_interval_s)


# -- spool: what an ended run could not deliver, kept on disk until a later command sends it
def write_spool(spool_dir: Path, run_id: str, tracking_uri: str, records: list[Record]) -> Path:
    spool_dir.mkdir(parents=True, exist_ok=True)
    gitignore = spool_dir.parent / ".gitignore"
    if spool_dir.parent.name == ".dkdm" and not gitignore.exists():
        gitignore.write_text("*\n")
    files_dir = spool_dir / f"{run_id}.files"
    path = spool_dir / f"{run_id}.jsonl"
    with path.open("a") as handle:
        for record in records:
            payload = record.payload
            if record.kind == "artifact":
                local, artifact_path = payload
                files_dir.mkdir(exist_ok=True)
                copy = files_dir / f"{len(list(files_dir.iterdir()))}-{Path(local).name}"
                if Path(local).is_dir():
                    shutil.copytree(local, copy)
                elif Path(local).exists():
                    shutil.copy2(local, copy)
                payload = (str(copy), artifact_path)
            elif record.kind == "metrics":
                payload = [list(m) for m in payload]
            handle.write(json.dumps({"uri": tracking_uri, "run_id": run_id, "kind": record.kind,
                                     "payload": payload}) + "\n")
    return path


def read_spool(path: Path) -> tuple[str, str, list[Record]]:
    uri, run_id, records = "", path.stem, []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        uri, run_id = entry["uri"], entry["run_id"]
        payload = entry["payload"]
        if entry["kind"] == "metrics":
            payload = [tuple(m) for m in payload]
        elif entry["kind"] == "artifact":
            payload = tuple(payload)
        records.append(Record(entry["kind"], payload))
    return uri, run_id, records
