"""Shared fixtures: where the reference data lives, and deterministic CPU threading."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


# Reference numbers and architectures (golden fixtures, the paper's tables) ship with the repository, so a
# bare clone runs every test.
FIXTURES = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return FIXTURES


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
