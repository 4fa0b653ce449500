"""Start the Streamlit dashboard (`dashboards/app.py`) as a subprocess; `dkdm dashboard` calls `run_dashboard`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dkdm.dashboard_queries.runs import EXPERIMENT_ENV, PROJECT_ROOT_ENV, STORAGE_ENV, TRACKING_URI_ENV, resolve_sources

APP_PATH = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"


def find_app(project_root: Path | None = None) -> Path:
    """The app of the project being looked at (DKDM_PROJECT_ROOT or the working directory) before the one beside
    this module: a non-editable install (the Docker images) has no dashboards/ next to site-packages."""
    root = Path(project_root or os.environ.get(PROJECT_ROOT_ENV) or Path.cwd())
    candidate = root / "dashboards" / "app.py"
    return candidate if candidate.is_file() else APP_PATH


def dashboard_command(port: int = 8501, address: str = "127.0.0.1", app: Path = APP_PATH) -> list[str]:
    """The `streamlit run` command line (headless, no usage statistics)."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"port: {port} is not a TCP port (1-65535)")
    if not address:
        raise ValueError("address: empty; use 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
    if not Path(app).is_file():
        raise FileNotFoundError(f"dashboard app not found at {app}: the dashboard runs from a source checkout")
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(int(port)),
            "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false"]


def dashboard_env(tracking_uri: str | None = None, storage: str | None = None, experiment: str | None = None,
                  project_root: Path | None = None) -> dict[str, str]:
    """The child's environment: the stores resolved to absolute locations, so the app's cwd does not matter."""
    root = Path(project_root or Path.cwd()).resolve()
    sources = resolve_sources(tracking_uri=tracking_uri, storage=storage, experiment=experiment, project_root=root)
    env = {**os.environ, TRACKING_URI_ENV: sources.tracking_uri, PROJECT_ROOT_ENV: str(root),
           EXPERIMENT_ENV: sources.experiment}
    if sources.storage:
        env[STORAGE_ENV] = sources.storage
    # An unreachable tracking server should show as an error on the page within seconds, not after minutes of
    # MLflow's default retries.
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return env


def run_dashboard(port: int = 8501, address: str = "127.0.0.1", tracking_uri: str | None = None,
                  storage: str | None = None, experiment: str | None = None) -> int:
    """Serve the dashboard until interrupted; returns streamlit's exit code (0 after Ctrl-C)."""
    command = dashboard_command(port, address, find_app())
    process = subprocess.Popen(command, env=dashboard_env(tracking_uri, storage, experiment))
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 0
