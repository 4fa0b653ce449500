"""The stage graph DVC builds from dvc.yaml for each space: pixel profiles have no first stage (no no-op stage in
`dvc dag`), latent profiles run `first_stage@autoencoder` before the teacher and every diffusion stage depends on
its out. The `pipeline` section that drives it must agree with `space` (DVC has no conditionals)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app
from dkdm.errors import DkdmError
from dkdm.settings import load_settings
from dkdm.settings_pipeline import FIRST_STAGE, FIRST_STAGE_OUT

REPO = Path(__file__).resolve().parents[1]
PACKAGED = sorted(p.stem for p in profiles.packaged_dir().glob("*.yaml"))
DIFFUSION_STAGES = ["teacher", "reference", "distill@", "evaluate_teacher", "evaluate@"]


def _graph(tmp_path: Path, profile: str) -> dict:
    """{stage: deps} as DVC itself resolves dvc.yaml with `profile` as params.yaml."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(profiles.packaged_dir() / f"{profile}.yaml", tmp_path / "params.yaml")
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        return {stage.name: sorted(str(d.def_path) for d in stage.deps) for stage in repo.index.stages}


@pytest.mark.parametrize("name", PACKAGED)
def test_every_profile_spells_out_its_pipeline(name):
    # DVC reads params.yaml as it is: a missing key is a parse error before any stage runs.
    data = yaml.safe_load((profiles.packaged_dir() / f"{name}.yaml").read_text())
    space = data.get("space", "pixel")
    assert data["pipeline"] == {"first_stage": FIRST_STAGE[space], "first_stage_out": FIRST_STAGE_OUT[space]}


def test_pixel_pipeline_has_no_first_stage(tmp_path):
    graph = _graph(tmp_path, "default")
    assert not [s for s in graph if "first_stage" in s or "autoencoder" in s]
    assert "data" in graph and "report" in graph and len(graph) == 15  # 6 + distill/evaluate x 4 runs + teacher eval
    assert all("outputs/autoencoder" not in deps for deps in graph.values())


def test_latent_pipeline_runs_the_first_stage_before_every_diffusion_stage(tmp_path):
    graph = _graph(tmp_path, "latent")
    assert graph["first_stage@autoencoder"] == ["outputs/data", "params.yaml"]
    users = [s for s in graph if any(s.startswith(p) for p in DIFFUSION_STAGES)]
    assert len(users) == 2 + 2 * 2 + 1  # teacher, reference, distill/evaluate x 2 runs, evaluate_teacher
    assert all("outputs/autoencoder" in graph[s] for s in users)


def test_pipeline_section_must_agree_with_space(tmp_path):
    path = tmp_path / "p.yaml"
    text = (profiles.packaged_dir() / "default.yaml").read_text()
    path.write_text(text.replace("  first_stage: []", "  first_stage: [autoencoder]"))
    with pytest.raises(DkdmError, match=r"pipeline.first_stage: a pixel profile has \[\]"):
        load_settings(path)
    path.write_text(text.replace("first_stage_out: outputs/data", "first_stage_out: outputs/autoencoder"))
    with pytest.raises(DkdmError, match="pipeline.first_stage_out: a pixel profile reads 'outputs/data'"):
        load_settings(path)


def test_autoencoder_by_hand_refuses_a_pixel_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    (tmp_path / "params.yaml").write_text((profiles.packaged_dir() / "ci.yaml").read_text())
    result = CliRunner().invoke(app, ["autoencoder"])
    assert result.exit_code == 2, result.output
    assert "works in pixel space and has no first stage" in result.stderr
    assert not (tmp_path / "outputs").exists()
