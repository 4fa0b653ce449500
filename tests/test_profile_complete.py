"""`dkdm profile use` on a short user profile: params.yaml gets every parameter dvc.yaml names."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app
from dkdm.profile_complete import _has, dvc_params
from dkdm.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def test_a_short_profile_becomes_a_complete_params_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "short.yaml").write_text("profile: short\ndistill: {rho: 0.3}\n")
    result = CliRunner().invoke(app, ["profile", "use", "short"])
    assert result.exit_code == 0, result.output
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    missing = [name for name in dvc_params() if not _has(params, name)]
    assert not missing and params["distill"]["rho"] == 0.3
    assert load_settings(Path("params.yaml")).for_log() == load_settings(Path("configs/short.yaml")).for_log()


def test_a_complete_profile_is_copied_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    assert CliRunner().invoke(app, ["profile", "use", "ci"]).exit_code == 0
    assert (tmp_path / "params.yaml").read_text() == (profiles.packaged_dir() / "ci.yaml").read_text()
