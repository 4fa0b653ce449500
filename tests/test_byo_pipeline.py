"""Your own teacher on your own unlabelled images, any shape: the README's "Distil your own teacher" commands, run
as written through bash in a fresh copy of the repository, on 16x16x3.

The user's inputs are stood in for first: a diffusers DDPM with random weights (built by diffusers itself) and
generated 16x16 RGB images in an .npz with no labels (arr_0 only). No Inception weights exist and nothing is
downloaded: the `features` stage trains a contrastive feature network on the images, so every score is `fd_learned`.
The block then goes through `dkdm inspect-teacher` (the teacher written inline), a named user preset and an inline
student, `dvc repro` to the report, and the diffusers export, which diffusers loads and samples from.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusers_helpers import diffusers, tiny_pipeline  # noqa: E402
from pipeline_helpers import REPO, active_env, copy_tree, run  # noqa: E402
from training.data import synthetic  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
STEPS = 50  # the stand-in teacher's T: the pool and D' cost grow with it, and 50 keeps the test to minutes


def readme_block() -> str:
    """The runnable bash block of the README section (the second one: the first lists the inputs)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Distil your own teacher", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[1]


def bring_teacher_and_images(repo: Path) -> None:
    """What the README's first block asks the user to put in the repository root."""
    tiny_pipeline(repo / "my-ddpm", sample_size=16, steps=STEPS)
    np.savez(repo / "my-images.npz", synthetic.shapes(160, 16, seed=0))  # arr_0 only: no labels


def metrics(repo: Path, run_name: str) -> dict[str, float]:
    return json.loads((repo / "outputs" / "evaluation" / run_name / "metrics.json").read_text())


def test_readme_distil_your_own_teacher_on_unlabelled_16x16_rgb(tmp_path):
    repo = tmp_path / "repo"
    copy_tree(repo)
    (repo / ".venv").symlink_to(Path(sys.prefix))
    bring_teacher_and_images(repo)
    git = ["git", "-c", "user.email=ci@dkdm", "-c", "user.name=ci"]
    run(["git", "init", "-q"], repo, 60)
    run(git + ["add", "-A"], repo, 60)
    run(git + ["commit", "-qm", "byo"], repo, 60)

    # active_env drops every DKDM_* of the caller, DKDM_INCEPTION_WEIGHTS included: nothing but the two inputs.
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=repo, env=active_env(repo),
                         capture_output=True, text=True, timeout=1100)
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"

    # The profile as written: the teacher and one student inline, the other student a named user preset.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["teacher"]["preset"]["family"] == "diffusers-unet2d"
    assert params["distill"]["runs"]["dit"]["student"]["family"] == "dit" and params["distill"]["student"] == "my-unet"
    assert params["features"]["kind"] == "learned"
    assert "my-unet: adm-unet" in out.stdout and "inline-dit-" in out.stdout  # `dkdm presets`, with counts

    # The feature space: learned on the real images, contrastively (there are no labels), quickly, as a DVC out.
    info = json.loads((repo / "outputs" / "features" / "info.json").read_text())
    assert info["kind"] == "learned" and info["objective"] == "contrastive" and info["num_classes"] == 0
    assert info["real_count"] == 128  # the profile's data.limit
    assert info["space"].startswith("learned-cnn-v1:") and info["train_seconds"] < 60
    assert (repo / "outputs" / "features" / "learned.safetensors").is_file()
    assert "features: learned space" in out.stdout

    # Every score is in that space, finite, with its noise floor; no FID and no digits space anywhere.
    for run_name in ("teacher", "dynamic", "dit"):
        scores = metrics(repo, run_name)
        for key in ("fd_learned", "fd_learned_teacher", "precision_learned", "recall_learned"):
            assert key in scores and np.isfinite(scores[key]), f"{run_name}: {key}"
        assert not any(k.startswith(("fid", "fd_digits", "fd_inception")) for k in scores), scores
    assert json.loads((repo / "outputs" / "reference" / "metrics.json").read_text())["fd_learned_noise_floor"] > 0
    report = (repo / "outputs" / "report" / "report.md").read_text()
    assert "| fd_learned | fd_learned_teacher |" in report and "Noise floor (fd_learned_noise_floor)" in report
    assert "| dynamic | dynamic | my-unet |" in report and "| dit | dynamic | inline-dit-" in report
    assert "FID" not in report.replace("FID protocol", "")

    # The teacher came in from diffusers; each student rebuilds itself from its sidecar alone.
    from training.models import load_checkpoint

    _, meta = load_checkpoint(repo / "outputs" / "teacher" / "teacher.safetensors")
    assert meta.model_config.family == "diffusers-unet2d" and meta.provenance["format"] == "diffusers"
    _, smeta = load_checkpoint(repo / "outputs" / "students" / "dit" / "student.safetensors")
    assert smeta.model_config.to_dict()["hidden_size"] == 64

    # Out again: diffusers' DDPMPipeline sampled from the export, and its UNet gives our student's epsilon.
    assert (repo / "student-sample.png").is_file()
    pipe = diffusers.DDPMPipeline.from_pretrained(repo / "outputs" / "export" / "dynamic-diffusers")
    ours, _ = load_checkpoint(repo / "outputs" / "students" / "dynamic" / "student.safetensors")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, STEPS - 1])
    with torch.no_grad():
        # 1e-5: float32 rounding of the same operations in another order; a wrong mapping is off by O(1)
        assert (ours(x, t) - pipe.unet(x, t).sample).abs().max() < 1e-5
