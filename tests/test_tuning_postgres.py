"""`dkdm tune` on a real PostgreSQL: two concurrent workers give exactly the requested trials, and Optuna's
heartbeat fails the trial of a worker that went silent (the many-host case the local pid check cannot see).

The test starts a throwaway cluster (initdb + pg_ctl from the Debian `postgresql` package) in a temp folder on
a free loopback port and removes it afterwards; without the server binaries it is skipped, saying why.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tuning_helpers import input_flags, load, make_inputs, start_worker, study_runs, worker_env, write_profile

pytestmark = pytest.mark.slow


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (pip install -e '.[dev]')")
    root = Path(tempfile.mkdtemp(prefix="dkdm-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to an unprivileged account
        account = "postgres" if _has_user("postgres") else "nobody"
        entry = pwd.getpwnam(account)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", account, "--"]
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "dkdm", "-A", "trust", "--no-sync", "-E", "UTF8")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dkdm", "optuna")
        yield f"postgresql+psycopg2://dkdm@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_two_workers_on_postgres_run_exactly_the_requested_trials(postgres_url: str, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "inputs")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    profile = write_profile(tmp_path / "tunetest.yaml", uri)
    args = ["--study", "pg-pair", "--n-trials", "2", "--storage", postgres_url, "--profile", str(profile),
            *input_flags(inputs)]
    workers = [start_worker(tmp_path, [*args, "--worker-index", str(k)], worker_env()) for k in (0, 1)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
    study = load(postgres_url, "pg-pair")
    numbers = sorted(t.number for t in study.trials)
    assert numbers == [0, 1, 2, 3]  # 2 workers x 2 trials: none lost, none duplicated
    assert all(t.state.is_finished() for t in study.trials)
    assert {t.user_attrs["dkdm_worker"]["pid"] for t in study.trials} == {w.pid for w in workers}
    parents, runs = study_runs(uri, "pg-pair")
    assert len(parents) == 1 and sorted(int(r.data.tags["dkdm.trial"]) for r in runs) == numbers


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_heartbeat_fails_a_silent_workers_trial(postgres_url: str) -> None:
    from dkdm.tuning.config import TuneSettings
    from dkdm.tuning.storage import fail_stale, open_storage

    storage: Any = open_storage(postgres_url, TuneSettings(heartbeat_interval_s=1, grace_period_s=2))
    assert storage.get_heartbeat_interval() == 1
    study = optuna.create_study(study_name="pg-heartbeat", storage=storage)
    silent = study.ask()  # a worker on another host that stops beating: no pid here to check
    storage.record_heartbeat(silent._trial_id)
    alive = study.ask()
    storage.record_heartbeat(alive._trial_id)
    time.sleep(2.5)
    storage.record_heartbeat(alive._trial_id)
    assert fail_stale(study) == [silent.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {silent.number: TrialState.FAIL, alive.number: TrialState.RUNNING}


RACE_SCRIPT = """
import sys, time
from dkdm.tuning.config import TuneSettings
from dkdm.tuning.storage import open_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
open_storage(sys.argv[1], TuneSettings())
print("opened")
"""


def test_workers_opening_an_empty_database_together_all_get_the_storage(postgres_url: str) -> None:
    """The race `dkdm tune` workers started together run into: all create Optuna's tables at once on a new
    database, and PostgreSQL tells the losers "relation ... already exists" (not only a unique violation).
    Several rounds of 8 workers, since one round may happen to miss the window."""
    import psycopg2

    base, _ = postgres_url.rsplit("/", 1)
    conn = psycopg2.connect(base.replace("postgresql+psycopg2", "postgresql") + "/optuna")
    conn.autocommit = True
    for round_ in range(4):
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE schema_race_{round_}")
        url = f"{base}/schema_race_{round_}"
        start_at = str(time.time() + 8.0)  # after every interpreter has imported optuna and sqlalchemy
        procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, url, start_at], env=worker_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(8)]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        for proc, output in zip(procs, outputs, strict=True):
            assert proc.returncode == 0 and "opened" in output, output
        assert optuna.get_all_study_summaries(optuna.storages.RDBStorage(url)) == []
    conn.close()
