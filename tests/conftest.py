"""Shared fixtures: where the reference data lives, and deterministic CPU threading."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("DKDM_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    if not (path / "reference").is_dir():
        pytest.fail(f"reference data not found at {path}: set DKDM_SHARED to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "golden"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The golden fixtures were recorded with 2 threads; reduction order depends on it.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
