"""A user's own unlabelled 16×16 RGB `.npz` through `dvc repro` to a report in `fd_learned`: no Inception weights,
no download, no labels (the `features` stage trains a contrastive feature network on the images)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_helpers import repro_profile
from training.data import synthetic

PROFILE = "ci-own16"


def bring_own_data(repo: Path) -> None:
    """What a new user does: an ADM-style .npz without labels and a profile copied from `ci`, edited."""
    (repo / "datasets").mkdir(exist_ok=True)
    np.savez(repo / "datasets" / "own16.npz", synthetic.shapes(256, 16, seed=0))  # arr_0 only: no labels
    profile = yaml.safe_load((repo / "platform/dkdm/configs/ci.yaml").read_text())
    profile["profile"] = PROFILE
    profile["data"].update(dataset="npz", path="datasets/own16.npz", image_size=16, channels=3, limit=None)
    # Named 16×16 RGB presets for now; inline architectures (teacher.arch) can replace them.
    profile["teacher"]["preset"] = "ci-rgb16-teacher"
    profile["distill"]["student"] = "ci-rgb16-student"
    profile["distill"]["runs"] = {k: v for k, v in profile["distill"]["runs"].items() if k in ("dynamic", "data_free")}
    profile["features"].update(kind="learned", classifier_epochs=10)
    (repo / "configs").mkdir(exist_ok=True)
    (repo / "configs" / f"{PROFILE}.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_unlabelled_rgb_npz_goes_through_dvc_repro_to_a_report_in_fd_learned(tmp_path):
    repo, _, repro = repro_profile(tmp_path / "repo", PROFILE, prepare=bring_own_data)
    info = json.loads((repo / "outputs/features/info.json").read_text())
    assert info["kind"] == "learned" and info["objective"] == "contrastive" and info["real_count"] == 256
    assert info["space"].startswith("learned-cnn-v1:") and info["train_seconds"] < 60
    assert (repo / "outputs/features/learned.safetensors").is_file()
    for run in ("teacher", "dynamic", "data_free"):
        metrics = json.loads((repo / f"outputs/evaluation/{run}/metrics.json").read_text())
        for key in ("fd_learned", "fd_learned_teacher", "precision_learned", "recall_learned"):
            assert key in metrics and np.isfinite(metrics[key]), f"{run}: {key}"
        assert not any(k.startswith(("fid", "fd_digits")) for k in metrics), metrics
    reference = json.loads((repo / "outputs/reference/metrics.json").read_text())
    assert reference["fd_learned_noise_floor"] > 0
    report = (repo / "outputs/report/report.md").read_text()
    assert "| fd_learned | fd_learned_teacher |" in report and "Noise floor (fd_learned_noise_floor)" in report
    assert "FID" not in report.replace("FID protocol", "")
    assert "learned" in repro.stdout
