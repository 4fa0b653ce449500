"""Where studies live, and how trials of dead workers are failed so a study never waits on them.

A plain path is an Optuna JournalStorage file (append-only log under a file lock: several processes on one
machine share it safely, which SQLite does not promise). A URL is an RDB storage: PostgreSQL for many workers
on many hosts, SQLite for a single machine. RDB storages get Optuna's heartbeat, so a trial whose worker
vanished is failed after `grace_period_s`. The journal has no heartbeat, so each trial records its worker
(host, pid, process start time) and any worker on the same host fails the trials of dead local processes.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dkdm.errors import DkdmError
from dkdm.tuning.config import TuneSettings

T = TypeVar("T")

if TYPE_CHECKING:
    from optuna import Study
    from optuna.storages import BaseStorage

log = logging.getLogger(__name__)
WORKER_ATTR = "dkdm_worker"
FAIL_REASON_ATTR = "fail_reason"
RDB_OPEN_ATTEMPTS = 5


def is_url(storage: str) -> bool:
    return "://" in storage


def storage_label(storage: str) -> str:
    """The storage as shown to users (a URL without its password)."""
    if not is_url(storage) or "@" not in storage:
        return storage
    scheme, rest = storage.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" not in creds:
        return storage
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def open_storage(storage: str, tune: TuneSettings) -> BaseStorage:
    """An Optuna storage for `storage` (a journal file path or an RDB URL); a bad one is one clear error."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if not storage.strip():
        raise DkdmError("tune.storage: empty; give a journal file path or a database URL")
    if not is_url(storage):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage)
        if path.is_dir():
            raise DkdmError(f"tune.storage: {storage} is a directory; give a journal file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        # Writers queue on SQLite's lock instead of failing at once with "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(RDB_OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    storage, engine_kwargs=engine_kwargs, heartbeat_interval=tune.heartbeat_interval_s,
                    grace_period=tune.grace_period_s,
                )
        except SQLAlchemyError as err:
            if not _lost_schema_race(err):
                raise DkdmError(f"tune.storage: cannot open {storage_label(storage)} ({_first_line(err)})") from None
            # Workers starting together on an empty database race to create Optuna's tables; the loser
            # finds them on the next try.
            if attempt == RDB_OPEN_ATTEMPTS - 1:
                raise DkdmError(f"tune.storage: could not create Optuna's tables in {storage_label(storage)}") from None
            time.sleep(1.0 + attempt)
        except (ImportError, ValueError) as err:
            raise DkdmError(f"tune.storage: cannot open {storage_label(storage)} ({_first_line(err)})") from None
    raise AssertionError("unreachable")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _lost_schema_race(err: Exception) -> bool:
    """Whether creating Optuna's tables failed because another worker created them first.

    PostgreSQL reports the loser as a unique violation on its catalog (IntegrityError) or as "relation ...
    already exists" (ProgrammingError, DuplicateTable); SQLite as "table ... already exists".
    """
    from sqlalchemy.exc import IntegrityError

    return isinstance(err, IntegrityError) or "already exists" in str(err)


def worker_identity() -> dict[str, Any]:
    """This process as (host, pid, start time): the start time tells a reused pid from the original."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": round(psutil.Process().create_time(), 2)}


def _alive(worker: dict[str, Any]) -> bool:
    import psutil

    try:
        proc = psutil.Process(int(worker["pid"]))
        return abs(proc.create_time() - float(worker["started"])) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
        return False


def fail_dead_local_trials(study: Study) -> list[int]:
    """Fail RUNNING trials whose recorded worker ran on this host and is gone; returns their numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if not isinstance(worker, dict) or worker.get("host") != host or _alive(worker):
            continue
        reason = f"worker pid {worker.get('pid')} on {host} died during the trial"
        storage = study._storage  # noqa: SLF001 - Optuna exposes no public call to fail another worker's trial
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)  # noqa: SLF001
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):  # noqa: SLF001
                failed.append(trial.number)
        except RuntimeError:  # finished meanwhile by someone else: nothing to do
            continue
    if failed:
        log.warning("tune: failed trials %s of dead local workers", failed)
    return failed


def fail_stale(study: Study) -> list[int]:
    """Both mechanisms: Optuna's heartbeat (RDB storages) and the local dead-pid check (every storage)."""
    import optuna

    before = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
    failed = fail_dead_local_trials(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op where the storage has no heartbeat (journal)
    after = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
    failed += sorted((before - after) - set(failed) - _finished_normally(study, before - after))
    return failed


def _finished_normally(study: Study, numbers: set[int]) -> set[int]:
    """Of trials that left RUNNING meanwhile, those that ended on their own (not failed by the heartbeat)."""
    return {t.number for t in study.get_trials(deepcopy=False) if t.number in numbers and t.state.name != "FAIL"}


def wait_for(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.5) -> T:
    """Poll `predicate()` until it returns something truthy or time runs out (returns the last value)."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value


def main(argv: list[str] | None = None) -> int:
    """`python -m dkdm.tuning.storage URL`: create Optuna's tables in an RDB storage (idempotent).

    optuna-dashboard opens its storage without creating the tables, so on a new database it fails until the
    first worker has run; the images' entry point calls this first (DKDM_OPTUNA_STORAGE_INIT).
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not is_url(args[0]):
        print("usage: python -m dkdm.tuning.storage DATABASE_URL", file=sys.stderr)
        return 2
    try:
        open_storage(args[0], TuneSettings())
    except DkdmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
