"""A syntax error in any YAML file a user gives is one line naming the file, line and column, with exit code 2,
through the `dkdm` command line: the active params.yaml, a profile file, a profile in configs/, and the
reproduction's params file. Nothing is written (a broken profile never replaces params.yaml)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app

# An unclosed flow sequence: the parser notices at line 3, column 6 (the `:` it cannot take inside [ ]).
UNCLOSED = "profile: broken\nseed: [1, 2\nscale: cpu\n"
UNCLOSED_AT = "line 3, column 6: not valid YAML: expected ',' or ']', but got ':'"
# A tab where indentation is expected: YAML forbids tabs there (line 3, column 1).
TAB = "profile: broken\ndata:\n\tdataset: digits\n"
TAB_AT = "line 3, column 1: not valid YAML: found character '\\t' that cannot start any token"


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("DKDM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    (tmp_path / "params.yaml").write_text((profiles.packaged_dir() / "ci.yaml").read_text())
    return tmp_path


def _one_error_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkdm: error: "), lines
    return lines[0]


@pytest.mark.parametrize(("text", "where"), [(UNCLOSED, UNCLOSED_AT), (TAB, TAB_AT)])
def test_broken_params_yaml_names_file_line_and_column(project, text, where):
    (project / "params.yaml").write_text(text)
    assert _one_error_line(["data"]) == f"dkdm: error: params.yaml, {where}"
    assert _one_error_line(["profile", "show"]) == f"dkdm: error: params.yaml, {where}"
    assert not (project / "outputs").exists()


def test_broken_profile_file_never_replaces_params_yaml(project):
    before = (project / "params.yaml").read_text()
    (project / "mine.yaml").write_text(UNCLOSED)
    assert _one_error_line(["profile", "use", "mine.yaml"]) == f"dkdm: error: mine.yaml, {UNCLOSED_AT}"
    assert (project / "params.yaml").read_text() == before


def test_broken_user_profile_in_configs(project):
    (project / "configs").mkdir()
    (project / "configs" / "mine.yaml").write_text(TAB)
    line = _one_error_line(["evaluate", "--teacher", "--profile", "mine"])
    assert line == f"dkdm: error: {Path('configs') / 'mine.yaml'}, {TAB_AT}"


def test_a_top_level_list_is_not_a_profile(project):
    (project / "params.yaml").write_text("- profile: default\n")
    assert "params.yaml: expected a mapping of settings" in _one_error_line(["profile", "show"])


def test_broken_reproduction_params(project):
    folder = project / "experiment"
    folder.mkdir()
    (folder / "params.yaml").write_text("base_profile: ../params.yaml\nexperiment:\n  seeds: [0, 1\n")
    line = _one_error_line(["reproduce", "teacher-eval", "--dir", str(folder)])
    assert line.startswith(f"dkdm: error: {folder / 'params.yaml'}, line 4, column 1: not valid YAML: ")


def test_installed_command_exits_2_with_the_same_line(project):
    # The user's path: the real `python -m dkdm` process, not the in-process runner.
    (project / "params.yaml").write_text(UNCLOSED)
    out = subprocess.run([sys.executable, "-m", "dkdm", "profile", "show"], cwd=project, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"dkdm: error: params.yaml, {UNCLOSED_AT}"
