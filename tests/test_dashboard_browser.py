"""The running dashboard in a real headless Chromium: `streamlit run` on a free loopback port against the fixture
store, the page loaded until its content is there, and a screenshot that shows it.

Needs Debian's `chromium` (apt-get install chromium). Set DKDM_DASHBOARD_SCREENSHOT=/some/file.png to keep the
screenshot.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_mlflow import build_fixture_store  # noqa: E402

from dkdm.dashboard import dashboard_command, dashboard_env  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 1000)
# Text that only the rendered Paper-vs-ours page has (the sidebar navigation also lists page titles).
CONTENT_MARKER = "Our results in this comparison"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's `chromium` is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chromium(url: str, profile: Path, *extra: str, budget_ms: int = 20_000) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             f"--virtual-time-budget={budget_ms}"]
    return subprocess.run([CHROMIUM, *flags, *extra, url], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def served_app(tmp_path: Path):
    store = build_fixture_store(tmp_path / "store")
    port = free_port()
    # The same command line and environment `dkdm dashboard` (run_dashboard) uses.
    command = dashboard_command(port, "127.0.0.1")
    env = dashboard_env(store.tracking_uri, store.storage, project_root=tmp_path)
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not come up on {url}: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # streamlit's own clean shutdown
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_dashboard_renders_in_headless_chromium(served_app: str, tmp_path: Path):
    profile = tmp_path / "chromium-profile"
    # The first loads import mlflow/plotly/torch in the server; load until the page's own content is in the DOM.
    dom = ""
    for _ in range(8):
        dom = chromium(served_app, profile, "--dump-dom").stdout
        if CONTENT_MARKER in dom:
            break
    assert CONTENT_MARKER in dom, "the Paper-vs-ours page never rendered its content in Chromium"
    assert "Table 2 · pixel" in dom and "Reproduction at CPU scale" in dom
    assert "Traceback" not in dom and "stException" not in dom

    # A screenshot is a fresh page load: on a busy machine Streamlit may still show its skeleton when Chromium's
    # virtual time runs out, so take it again (with more time) until the page is drawn.
    shot = tmp_path / "dashboard.png"
    inked, colours = 0.0, 0
    for budget_ms in (20_000, 40_000, 60_000, 90_000):
        done = chromium(served_app, profile, f"--screenshot={shot}", budget_ms=budget_ms)
        assert shot.is_file(), done.stderr[-2000:]
        image = np.asarray(Image.open(shot).convert("RGB"))
        assert image.shape == (WINDOW[1], WINDOW[0], 3)
        main = image[:, 320:]  # right of the sidebar
        inked = (main.min(axis=2) < 200).mean()
        colours = len(np.unique(image.reshape(-1, 3), axis=0))
        if inked > 0.01 and colours > 700:
            break
    # Measured on this page: rendered, 4.0% of the main area is dark ink and the image has ~1,300 colours; the
    # skeleton Streamlit shows before the script has run has 0.04% ink and ~420 colours. The thresholds sit
    # between the two with a margin of 4x (ink) and 1.7x (colours) below the rendered page.
    assert inked > 0.01, f"only {inked:.2%} of the main area has ink: the page did not render"
    assert colours > 700, f"only {colours} distinct colours in the screenshot: the page did not render"
    if os.environ.get("DKDM_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DKDM_DASHBOARD_SCREENSHOT"])
