"""Refusal messages name the file and the reason and give only safe advice: never torch's hint to retry with
`weights_only=False` (which would run the code a malicious file carries)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app

UNSAFE = re.compile(r"weights_only\s*=?\s*False|can still be loaded|trusted source|arbitrary code", re.IGNORECASE)


class _RunsCode:
    """Pickles to a call of os.getcwd: harmless here, but exactly the shape of a file that runs code on load."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture()
def files(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode()}, evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02garbage")
    return evil, garbage


def _loaders():
    from training.eval.inception import load_fid_inception
    from training.models import load_foreign_state_dict
    from training.models.ldm_checkpoint import read_foreign_state_dict

    return {"inception": load_fid_inception, "foreign": load_foreign_state_dict, "ldm": read_foreign_state_dict}


@pytest.mark.parametrize("loader", ["inception", "foreign", "ldm"])
def test_every_refusal_names_the_file_and_reason_and_never_suggests_unsafe_loading(files, loader):
    evil, garbage = files
    load = _loaders()[loader]
    with pytest.raises(Exception) as refused:
        load(evil)
    message = str(refused.value)
    assert len(message.splitlines()) == 1, message
    assert str(evil) in message and "posix.getcwd" in message and "refused" in message, message
    assert not UNSAFE.search(message), message
    with pytest.raises(Exception) as unreadable:
        load(garbage)
    message = str(unreadable.value)
    assert str(garbage) in message and "Unsupported operand" in message, message
    assert not UNSAFE.search(message), message


def test_import_teacher_refuses_a_pickle_with_code_in_one_safe_line(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["import-teacher", str(files[0]), "--preset", "ci-teacher",
                                      "--out", str(tmp_path / "t.safetensors"), "--profile", "ci"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(files[0]) in lines[0] and not UNSAFE.search(lines[0]), lines
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("record, reason", [
    ({"space": "pixel", "first_stage": None}, "records no first stage (space: pixel)"),
    ({"space": "latent", "first_stage": "vq-f4-ci"}, "the first-stage import did not finish"),
])
def test_latent_stage_without_a_usable_first_stage_says_what_to_run(tmp_path, monkeypatch, record, reason):
    for key in [k for k in os.environ if k.startswith("DKDM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((profiles.packaged_dir() / "latent-ci.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert CliRunner().invoke(app, ["data"]).exit_code == 0
    info = Path("outputs/autoencoder/info.json")
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps(record))
    result = CliRunner().invoke(app, ["teacher"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(info) in lines[0] and reason in lines[0] and "dkdm autoencoder" in lines[0], lines[0]
    assert not Path("outputs/teacher").exists()
