"""Paths and names print as given: every command that prints a summary, run through the CLI with paths and names
that hold rich markup (`[`, `]`, `[/x]`, `[bold]`), an emoji code and non-ASCII characters, exits 0 and shows them
verbatim. (Reported: `dkdm tune --storage /abs/path/opt.journal` crashed after a finished study with a MarkupError.)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app
from reproduce_helpers import synthetic_experiment
from tuning_helpers import FAST_TUNE_ENV, input_flags, make_inputs, write_profile

# A folder name: the "/" of "[/x]" makes it two nested folders, "a[b] [" and "x] [bold]é ü :memo:".
ODD_DIR = "a[b] [/x] [bold]é ü :memo:"
# A run name: distill.runs refuses "/", " " and "@", so no closing tag here; an opening one and an emoji code.
ODD_RUN = "[bold]é[x]ü:memo:"


def _cli(args: list[str]) -> Any:
    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Teacher, digits classifier and FD' statistics, in a folder whose path holds markup."""
    return make_inputs(tmp_path_factory.mktemp("inputs") / ODD_DIR)


@pytest.fixture
def odd_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory (a markup-named folder) without tracking: these tests are about the printed text."""
    cwd = tmp_path / ODD_DIR
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    monkeypatch.delenv("DKDM_DEBUG", raising=False)
    return cwd


def test_tune_summary_and_show_print_an_absolute_storage_path_verbatim(inputs, odd_cwd, monkeypatch):
    for key, value in FAST_TUNE_ENV.items():
        monkeypatch.setenv(key, value)
    profile = write_profile(odd_cwd / "tune [é].yaml", f"sqlite:///{odd_cwd / 'unused.db'}")
    storage = odd_cwd / "opt [/x] ü.journal"  # absolute, as in the report: "[/abs/path/opt.journal, 67s]"
    args = ["--storage", str(storage), "--profile", str(profile)]
    result = _cli(["tune", "--study", "odd", "--n-trials", "1", "--pruner", "none", *args, *input_flags(inputs)])
    assert result.exit_code == 0, result.output
    assert "tune odd: ran 1 trials (1 complete in the study)" in result.output
    assert f"[{storage}, " in result.output  # the one-line summary
    assert f"1 complete; storage {storage}\n" in result.output  # the table's caption: one line, not wrapped

    shown = _cli(["tune", "--show", "odd", *args])
    assert shown.exit_code == 0, shown.output
    assert "study odd: best 1 of 1 trials by fd_digits_teacher" in shown.output
    assert shown.output.rstrip().endswith(f"1 complete; storage {storage}")


def test_evaluate_and_report_print_checkpoint_paths_and_run_names_verbatim(inputs, odd_cwd):
    profile = write_profile(odd_cwd / "eval [é].yaml", "sqlite:///unused.db")
    data = yaml.safe_load(profile.read_text())
    data["distill"]["runs"] = {ODD_RUN: {"method": "dynamic", "source": "outputs/pool"}}
    profile.write_text(yaml.safe_dump(data, allow_unicode=True))
    outputs = odd_cwd / "outputs"
    for path in inputs.values():
        shutil.copytree(path.parent, outputs / path.parent.name, dirs_exist_ok=True)
    for suffix in (".safetensors", ".json"):  # FD against the teacher's samples stands in for FD against data
        shutil.copy(inputs["teacher_stats"].with_suffix(suffix), outputs / "features" / f"real_stats{suffix}")
    (outputs / "reference" / "metrics.json").write_text(json.dumps({"fd_digits_noise_floor": 0.5,
                                                                   "teacher_samples": 48}))
    # The untrained teacher stands in for a student: what is scored does not matter here, what is printed does.
    checkpoint = odd_cwd / "ckpt [/x]" / "stu[dent] é :memo:.safetensors"
    for target in (checkpoint, outputs / "students" / ODD_RUN / "student.safetensors"):
        target.parent.mkdir(parents=True)
        shutil.copy(inputs["teacher"], target)
        shutil.copy(inputs["teacher"].with_suffix(".json"), target.with_suffix(".json"))

    by_path = _cli(["evaluate", "--checkpoint", str(checkpoint), "--profile", str(profile)])
    assert by_path.exit_code == 0, by_path.output
    assert f"evaluate {checkpoint.stem}: 16 pixel samples, 5 ancestral steps: fd_digits " in by_path.output
    assert by_path.output.rstrip().endswith(f"-> {Path('evaluations') / checkpoint.stem / 'metrics.json'}")

    for args in (["--teacher"], ["--run", ODD_RUN]):
        result = _cli(["evaluate", *args, "--profile", str(profile)])
        assert result.exit_code == 0, result.output
    assert f"-> outputs/evaluation/{ODD_RUN}/metrics.json" in result.output

    report = _cli(["report", "--profile", str(profile)])
    assert report.exit_code == 0, report.output
    assert "report: 1 students vs teacher fd_digits " in report.output
    assert f"best student {ODD_RUN} fd_digits " in report.output
    assert f"| {ODD_RUN} |" in (outputs / "report" / "report.md").read_text()


def test_reproduce_report_prints_its_folder_verbatim(odd_cwd):
    folder = odd_cwd / "exp [/y] ø"
    synthetic_experiment(folder)
    result = _cli(["reproduce", "report", "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"-> {folder.resolve() / 'outputs' / 'report' / 'report.md'}")


def test_profile_show_prints_paths_and_names_verbatim(odd_cwd):
    data = yaml.safe_load((profiles.packaged_dir() / "ci.yaml").read_text())
    odd = {"experiment": "expé [/x] [bold]b[/bold] :memo: ü", "spool_dir": str(odd_cwd / "spool [/z] é")}
    data["tracking"].update(odd)
    path = odd_cwd / "prof [/w]" / "my [bold]é.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = _cli(["profile", "show", str(path)])
    assert result.exit_code == 0, result.output
    for value in odd.values():
        assert value in result.output


def test_usage_errors_print_the_argument_verbatim(odd_cwd):
    result = CliRunner().invoke(app, ["nosuch[/x]é:memo:"])
    assert result.exit_code == 2
    assert "No such command 'nosuch[/x]é:memo:'" in result.output
