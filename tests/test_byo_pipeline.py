"""Any image shape end to end: the README's "Distil your own teacher" commands, run as written, on 16x16x3.

A stand-in for the user's inputs is made first: a diffusers DDPM with random weights (built by diffusers), random
16x16 RGB images in an .npz and random FID Inception weights (the metrics' numbers mean nothing here; that every
stage runs and the report comes out does). Then the README block runs verbatim through bash in a fresh copy.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusers_helpers import diffusers, tiny_pipeline  # noqa: E402
from pipeline_helpers import REPO, active_env, copy_tree, run  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def readme_block() -> str:
    """The runnable bash block of the README section (the second one: the first lists the inputs)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Distil your own teacher", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)[1]


def random_inception_weights(path: Path, monkeypatch) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = path.with_suffix(".empty")
    torch.save({}, empty)
    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                          feature_extractor_weights_path=str(empty))
    torch.save(net.state_dict(), path)


def test_readme_distil_your_own_teacher_on_16x16_rgb(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    copy_tree(repo)
    (repo / ".venv").symlink_to(Path(sys.prefix))
    tiny_pipeline(repo / "my-ddpm", sample_size=16, steps=100)
    np.savez(repo / "my-images.npz", np.random.default_rng(0).integers(0, 256, (160, 16, 16, 3), dtype=np.uint8))
    weights = tmp_path / "inception.pth"
    random_inception_weights(weights, monkeypatch)
    git = ["git", "-c", "user.email=ci@dkdm", "-c", "user.name=ci"]
    run(["git", "init", "-q"], repo, 60)
    run(git + ["add", "-A"], repo, 60)
    run(git + ["commit", "-qm", "byo"], repo, 60)

    env = {**active_env(repo), "DKDM_INCEPTION_WEIGHTS": str(weights)}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert out.returncode == 0, f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}"

    report = (repo / "outputs" / "report" / "report.md").read_text()
    assert "dynamic" in report and "dit" in report
    assert "my-unet: adm-unet" in out.stdout and "inline-dit-" in out.stdout  # `dkdm presets`, with counts
    from training.models import load_checkpoint

    teacher, meta = load_checkpoint(repo / "outputs" / "teacher" / "teacher.safetensors")
    assert meta.model_config.family == "diffusers-unet2d" and meta.provenance["format"] == "diffusers"
    student, smeta = load_checkpoint(repo / "outputs" / "students" / "dit" / "student.safetensors")
    assert smeta.model_config.to_dict()["hidden_size"] == 64  # the inline config, rebuilt from the sidecar alone
    assert (repo / "student-sample.png").is_file()
    pipe = diffusers.DDPMPipeline.from_pretrained(repo / "outputs" / "export" / "dynamic-diffusers")
    ours, _ = load_checkpoint(repo / "outputs" / "students" / "dynamic" / "student.safetensors")
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 99])
    with torch.no_grad():
        assert (ours(x, t) - pipe.unet(x, t).sample).abs().max() < 1e-5
    assert os.path.getsize(repo / "outputs" / "export" / "dynamic-diffusers" / "unet" / "config.json") > 0
