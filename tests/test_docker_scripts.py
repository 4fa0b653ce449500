"""The scripts the images and the stack run, run here outside containers.

docker/entrypoint.sh (secrets, MLflow basic-auth config, DVC set-up), docker/claim-gpu.sh (GPU
slots between concurrent workers), docker/fetch_weights.py (the hash check), the bucket script
with a stand-in `mc`, and (slow) the MLflow server of the stack, started through the entry point
with the compose file's own flags, on a real PostgreSQL prepared by create-databases.sh.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import docker_support as ds

VENV_BIN = Path(sys.executable).parent
ENTRYPOINT = ds.DOCKER_DIR / "entrypoint.sh"
CLAIM_GPU = ds.DOCKER_DIR / "claim-gpu.sh"
BASE_ENV = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8"}


def run_sh(script: Path, *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120):
    return subprocess.run(["sh", str(script), *args], env={**BASE_ENV, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# --- entrypoint.sh -------------------------------------------------------------------------------


def test_entrypoint_turns_secret_files_into_variables(tmp_path: Path):
    (tmp_path / "pg").write_text("pg-secret\n")
    (tmp_path / "s3").write_text("s3 secret with spaces")
    result = run_sh(ENTRYPOINT, "sh", "-c",
                    'printf "%s|%s|%s" "$PGPASSWORD" "$AWS_SECRET_ACCESS_KEY" "${PGPASSWORD_FILE-unset}"',
                    env={"PGPASSWORD_FILE": str(tmp_path / "pg"), "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "s3"),
                         "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pg-secret|s3 secret with spaces|unset"


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_entrypoint_refuses_a_missing_or_empty_secret(tmp_path: Path, case: str):
    secret = tmp_path / "secret"
    if case == "empty":
        secret.write_text("")
    result = run_sh(ENTRYPOINT, "true", env={"MLFLOW_TRACKING_PASSWORD_FILE": str(secret), "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "MLFLOW_TRACKING_PASSWORD_FILE" in result.stderr


def test_entrypoint_needs_a_command(tmp_path: Path):
    result = run_sh(ENTRYPOINT, env={"HOME": str(tmp_path)})
    assert result.returncode == 2 and "no command" in result.stderr


def test_entrypoint_writes_the_basic_auth_config_mlflow_reads(tmp_path: Path):
    uri = "postgresql+psycopg2://dkdm@postgres:5432/mlflow_auth?options=-c%20search_path%3Dauth"
    result = run_sh(ENTRYPOINT, "sh", "-c", 'printf %s "$MLFLOW_AUTH_CONFIG_PATH"',
                    env={"MLFLOW_AUTH_DATABASE_URI": uri, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    config_path = Path(result.stdout)
    assert config_path == tmp_path / ".mlflow-auth" / "basic_auth.ini"
    assert oct(config_path.stat().st_mode & 0o777) == "0o600"
    # Read back the way MLflow's auth app does (configparser with '%' interpolation).
    parser = configparser.ConfigParser()
    parser.read(config_path)
    assert parser["mlflow"]["database_uri"] == uri
    assert parser["mlflow"]["default_permission"] == "READ"
    assert "password" not in config_path.read_text()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to tell DVC there is no repository")
def test_entrypoint_points_dvc_at_the_shared_cache_and_the_minio_remote(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    env = {"HOME": str(tmp_path), "DKDM_DVC_CACHE_DIR": "/var/cache/dkdm/dvc", "DKDM_DVC_REMOTE_URL": "s3://dvc",
           "DKDM_DVC_REMOTE_ENDPOINT": "http://minio:9000", "DVC_NO_ANALYTICS": "1"}
    result = run_sh(ENTRYPOINT, "dvc", "config", "--list", env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = {"core.no_scm=true", "cache.dir=/var/cache/dkdm/dvc", "core.remote=minio",
                "remote.minio.url=s3://dvc", "remote.minio.endpointurl=http://minio:9000"}
    # Nothing but the command's own output: the set-up is quiet.
    assert {line.lower() for line in result.stdout.split()} >= expected, result.stdout
    assert all("=" in line for line in result.stdout.split()), result.stdout
    # A second start (the container restarted) keeps the same configuration, without errors.
    again = run_sh(ENTRYPOINT, "dvc", "config", "--list", env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {line.lower() for line in again.stdout.split()} >= expected, again.stdout
    assert "s3://dvc" in (tmp_path / ".dvc" / "config.local").read_text()


def test_entrypoint_creates_the_optuna_tables_optuna_dashboard_needs(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    # The way optuna-dashboard opens its storage: no table creation, so a new database fails without them.
    opens = ("import optuna, sys; s = optuna.storages.RDBStorage(sys.argv[1], skip_table_creation=True); "
             "print(len(s.get_all_studies()))")
    bare = subprocess.run([sys.executable, "-c", opens, url], capture_output=True, text=True, timeout=120)
    assert bare.returncode != 0
    for _ in range(2):  # idempotent: a restarted dashboard container runs it again
        result = run_sh(ENTRYPOINT, sys.executable, "-c", opens, url,
                        env={"HOME": str(tmp_path), "DKDM_OPTUNA_STORAGE_INIT": url})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "0"


def test_entrypoint_refuses_an_optuna_storage_it_cannot_prepare(tmp_path: Path):
    result = run_sh(ENTRYPOINT, "true", env={"HOME": str(tmp_path), "DKDM_OPTUNA_STORAGE_INIT": "nosuchdb://x/y"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: tune.storage: cannot open nosuchdb://x/y"), result.stderr
    assert lines[-1] == "dkdm-entrypoint: cannot prepare the Optuna storage"
    assert len(lines) == 2, result.stderr


# --- claim-gpu.sh --------------------------------------------------------------------------------


def test_concurrent_workers_claim_different_gpus_until_none_is_left(tmp_path: Path):
    env = {"DKDM_GPU_LOCK_DIR": str(tmp_path / "locks"), "DKDM_GPU_COUNT": "2", "DKDM_TUNE_WORKER_BASE": "8"}
    report = 'echo "$CUDA_VISIBLE_DEVICES $DKDM_TUNE_WORKER $CUDA_DEVICE_ORDER"'
    holders = [
        subprocess.Popen(["sh", str(CLAIM_GPU), "sh", "-c", f"{report}; read line"], env={**BASE_ENV, **env},
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        claimed = sorted(holder.stdout.readline().split()[0] for holder in holders)
        assert claimed == ["0", "1"]
        third = run_sh(CLAIM_GPU, "true", env=env, timeout=30)
        assert third.returncode == 3 and "all 2 GPUs" in third.stderr
    finally:
        for holder in holders:
            holder.communicate("done\n", timeout=30)
    # The locks die with their workers: the GPUs are free again.
    freed = run_sh(CLAIM_GPU, "sh", "-c", report, env=env, timeout=30)
    assert freed.returncode == 0 and freed.stdout.split() == ["0", "8", "PCI_BUS_ID"]


@pytest.mark.parametrize("count, message", [("0", "no GPU visible"), ("two", "not a number")])
def test_claim_gpu_rejects_a_host_without_usable_gpus(tmp_path: Path, count: str, message: str):
    result = run_sh(CLAIM_GPU, "true", env={"DKDM_GPU_LOCK_DIR": str(tmp_path), "DKDM_GPU_COUNT": count})
    assert result.returncode == 2 and message in result.stderr


# --- fetch_weights.py ----------------------------------------------------------------------------


def _fetch(url: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ds.DOCKER_DIR / "fetch_weights.py"), url, str(dest)],
                          capture_output=True, text=True, timeout=60)


def test_fetch_weights_keeps_a_file_whose_hash_matches_its_name(tmp_path: Path):
    payload = b"weights" * 1000
    name = f"model-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (tmp_path / name).write_bytes(payload)
    result = _fetch((tmp_path / name).as_uri(), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / name).read_bytes() == payload


def test_fetch_weights_rejects_a_file_whose_hash_does_not_match(tmp_path: Path):
    payload = b"tampered"
    wrong = "0" * 8 if not hashlib.sha256(payload).hexdigest().startswith("0" * 8) else "1" * 8
    source = tmp_path / f"model-{wrong}.pth"
    source.write_bytes(payload)
    result = _fetch(source.as_uri(), tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"does not match {wrong}" in result.stderr
    assert list((tmp_path / "out").iterdir()) == [], "nothing may be left behind"


def test_fetch_weights_needs_the_hash_in_the_name(tmp_path: Path):
    source = tmp_path / "model.pth"
    source.write_bytes(b"x")
    result = _fetch(source.as_uri(), tmp_path / "out")
    assert result.returncode == 1 and "carries no sha256 prefix" in result.stderr


def test_the_inception_url_carries_the_hash_prefix_torch_fidelity_expects():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        assert f"INCEPTION_URL={URL_INCEPTION_V3}" in (ds.DOCKER_DIR / dockerfile).read_text()
    sys.path.insert(0, str(ds.DOCKER_DIR))
    try:
        from fetch_weights import expected_prefix
    finally:
        sys.path.remove(str(ds.DOCKER_DIR))
    assert expected_prefix(URL_INCEPTION_V3.rsplit("/", 1)[1]) == "6726825d"


# --- create-buckets.sh ---------------------------------------------------------------------------


def test_bucket_script_creates_every_bucket_idempotently(tmp_path: Path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "mc.log"
    (fake_bin / "mc").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (fake_bin / "mc").chmod(0o755)
    (tmp_path / "pw").write_text("minio-secret\n")
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "MINIO_ROOT_USER": "dkdm",
           "MINIO_ROOT_PASSWORD_FILE": str(tmp_path / "pw"), "DKDM_BUCKETS": "mlflow dvc"}
    result = run_sh(ds.DOCKER_DIR / "minio" / "create-buckets.sh", env=env)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "alias set dkdm http://minio:9000 dkdm minio-secret",
        "mb --ignore-existing dkdm/mlflow",
        "mb --ignore-existing dkdm/dvc",
    ]
    missing = run_sh(ds.DOCKER_DIR / "minio" / "create-buckets.sh", env={**env, "MINIO_ROOT_PASSWORD_FILE": "/nope"})
    assert missing.returncode == 2 and "MINIO_ROOT_PASSWORD_FILE" in missing.stderr


# --- slow: the MLflow server of the stack on a real PostgreSQL ------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, *, auth: tuple[str, str] | None = None, host: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster with password auth on a loopback port, as the stack's `dkdm` user."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs the postgresql package)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile_dir := __import__("tempfile").mkdtemp(prefix="dkdm-pg-"))
    password = "pg-" + os.urandom(8).hex()
    (root / "pw").write_text(password)
    if as_postgres:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    port = _free_port()
    data = root / "data"
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "dkdm", "--auth-host=scram-sha-256",
                    "--auth-local=trust", f"--pwfile={root / 'pw'}"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True,
                   timeout=120)
    try:
        yield {"bin": bin_dir, "port": port, "password": password, "root": root}
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(tempfile_dir, ignore_errors=True)


@pytest.mark.slow
def test_stack_mlflow_server_runs_basic_auth_on_postgres(postgres, tmp_path: Path):
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (Flask-WTF) in the dev extras")
    pg_env = {"PGHOST": "127.0.0.1", "PGPORT": str(postgres["port"]), "PGPASSWORD": postgres["password"],
              "PATH": f"{postgres['bin']}:{BASE_ENV['PATH']}"}
    # The compose file's init: POSTGRES_DB exists (created here as the image would), the script adds the rest.
    compose = ds.load_compose({})
    db_env = compose["services"]["postgres"]["environment"]
    subprocess.run(["createdb", "--username=dkdm", db_env["POSTGRES_DB"]], env={**BASE_ENV, **pg_env}, check=True,
                   timeout=60)
    created = run_sh(ds.DOCKER_DIR / "postgres" / "create-databases.sh",
                     env={**pg_env, "POSTGRES_USER": "dkdm", "DKDM_EXTRA_DATABASES": db_env["DKDM_EXTRA_DATABASES"]})
    assert created.returncode == 0, created.stderr

    service = compose["services"]["mlflow"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "postgres_password").write_text(postgres["password"])
    (secrets / "mlflow_admin_password").write_text("admin-" + os.urandom(6).hex())
    pg_address = f"127.0.0.1:{postgres['port']}"
    port = _free_port()
    env = {key: str(value).replace("/run/secrets", str(secrets)).replace("postgres:5432", pg_address)
           for key, value in service["environment"].items() if not key.startswith(("AWS_", "MLFLOW_S3_"))}
    env.update(HOME=str(tmp_path), MLFLOW_SERVER_ALLOWED_HOSTS=env["MLFLOW_SERVER_ALLOWED_HOSTS"]
               .replace("localhost:*", f"localhost:{port}").replace("127.0.0.1:*", f"127.0.0.1:{port}"))
    command = []
    for arg in service["command"]:
        if arg.startswith("--artifacts-destination="):
            arg = f"--artifacts-destination={(tmp_path / 'artifacts').as_uri()}"  # no MinIO here: a local dir
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--workers="):
            arg = "--workers=1"
        command.append(arg.replace("postgres:5432", pg_address))
    server = subprocess.Popen(["sh", str(ENTRYPOINT), *command], env={**BASE_ENV, **env}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    admin = ("admin", (secrets / "mlflow_admin_password").read_text())
    try:
        deadline = time.monotonic() + 180
        while _get_or_none(f"{base}/health") != 200:
            assert server.poll() is None, f"mlflow server exited:\n{server.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "mlflow server did not become healthy in 180 s"
            time.sleep(1)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(search) == 401, "basic auth must be on"
        assert _get(search, auth=(admin[0], "wrong")) == 401
        assert _get(search, auth=admin) == 200
        assert _get(search, auth=admin, host="mlflow:5000") == 200, "containers call it mlflow:5000"
        assert _get(search, auth=admin, host="attacker.example") in (400, 403)

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=base)
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin
        try:
            experiment = client.create_experiment("docker-stack-check")
            run = client.create_run(experiment)
            (tmp_path / "grid.txt").write_text("proxied")
            client.log_artifact(run.info.run_id, str(tmp_path / "grid.txt"), artifact_path="samples")
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        stored = list((tmp_path / "artifacts").rglob("grid.txt"))
        assert [p.read_text() for p in stored] == ["proxied"], "artifacts go through the server's proxy"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _get_or_none(url: str) -> int | None:
    try:
        return _get(url)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
