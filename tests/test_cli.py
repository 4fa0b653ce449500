"""The `dkdm` command line: help on every command, one-line errors with exit code 2, the module entry point."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"import-teacher", "train-teacher", "prepare-pool", "distill", "train", "sample", "evaluate",
            "dashboard", "report", "profile"}
PIPELINE = {"data", "teacher", "features", "reference"}


def _command_names() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups}


def test_required_commands_exist():
    assert REQUIRED | PIPELINE <= _command_names()


@pytest.mark.parametrize("command", sorted(REQUIRED | PIPELINE))
def test_help_on_every_command(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    if command not in ("profile",):
        assert "--profile" in result.stdout or command in ("sample",) or "profile" in result.stdout


@pytest.mark.parametrize("sub", ["list", "show", "use"])
def test_help_on_profile_subcommands(sub):
    result = CliRunner().invoke(app, ["profile", sub, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("name", ["tune", "reproduce"])
def test_subcommand_groups_are_mounted(name):
    assert name in _command_names()
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_no_arguments_shows_help():
    result = CliRunner().invoke(app, [])
    assert "Usage:" in result.output and "distill" in result.output


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((profiles.packaged_dir() / "ci.yaml").read_text())
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["distill", "--run", "nope"], "--run: 'nope' is not in distill.runs"),
        (["train", "--run", "dynamic"], "`dkdm train` runs the baselines"),
        (["evaluate"], "exactly one of --run NAME, --teacher or --checkpoint"),
        (["evaluate", "--run", "dynamic"], "outputs/students/dynamic/student.safetensors does not exist"),
        (["prepare-pool"], "outputs/teacher/teacher.safetensors does not exist"),
        (["sample", "missing.safetensors"], "missing.safetensors does not exist"),
        (["import-teacher", "missing.pt", "--preset", "cifar10-57M"], "'missing.pt' does not exist"),
        (["report"], "does not exist; run `dkdm evaluate"),
    ],
)
def test_user_errors_are_one_line_exit_2(project, args, needle):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkdm: error: "), lines
    assert needle in lines[0]
    assert not (project / "outputs").exists()


def test_import_teacher_rejects_unknown_preset(project):
    (project / "fake.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(app, ["import-teacher", "fake.pt", "--preset", "cifar10-99M"])
    assert result.exit_code == 2
    assert "cifar10-99M" in result.stderr


def test_import_teacher_converts_a_state_dict(project):
    import torch

    from training.models import create_model, get_preset, load_checkpoint

    torch.manual_seed(0)
    net = create_model(get_preset("ci-teacher"))
    torch.save({k: v.half() for k, v in net.state_dict().items()}, project / "teacher.pt")
    result = CliRunner().invoke(app, ["import-teacher", "teacher.pt", "--preset", "ci-teacher",
                                      "--out", "imported/t.safetensors"])
    assert result.exit_code == 0, result.output
    assert "import-teacher:" in result.stdout
    model, meta = load_checkpoint(project / "imported" / "t.safetensors")
    reference = {k: v.half().float() for k, v in net.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "dkdm", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "prepare-pool" in out.stdout


def test_internal_errors_do_not_print_tracebacks(project, monkeypatch):
    import dkdm.cli as cli

    def boom(*_args, **_kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "context", boom)
    result = CliRunner().invoke(app, ["data"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "kaboom" in result.stderr and "DKDM_DEBUG" in result.stderr
    assert isinstance(app, typer.Typer)
