"""Exact resume: N steps straight == N/2-ish, killed, resumed in a fresh process; atomic checkpoint writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.train.state import CheckpointError, atomic_save_tensors, read_meta

REPO = Path(__file__).resolve().parents[1]

# Dynamic DKDM with random discard (a pending dropped batch may sit in the checkpoint), microbatching,
# gradient clipping, EMA, and a dropout student (so the global torch RNG must be restored too).
RUN_SCRIPT = r"""
import sys
import torch
torch.set_num_threads(1)  # exactness is between our own runs; 1 thread avoids spin-waits on shared cores
from training.diffusion import create_diffusion
from training.distill import DistillConfig, build_run
from training.models import create_model, get_preset

out_dir, until = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
teacher = create_model(get_preset("ci-teacher"))
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in teacher.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
torch.manual_seed(2)
student = create_model({**get_preset("ci-teacher"), "dropout": 0.2})
diffusion = create_diffusion(steps=10)
config = DistillConfig(method="dynamic", rho=0.5, batch_size=4, teacher_batch_size=8, iterations=8,
                       checkpoint_every=3, discard_prob=0.3, microbatch=2, lr=1e-3, ema_rate=0.9,
                       grad_clip=1.0, log_every=2)
trainer = build_run(config, student=student, student_diffusion=diffusion, image_shape=(1, 8, 8), device="cpu",
                    teacher=teacher, teacher_diffusion=diffusion, out_dir=out_dir)
resumed = trainer.resume_if_possible()
result = trainer.run(until=until)
print("resumed" if resumed else "fresh", trainer.step, result.source_stats["discarded"])
"""


def _launch(script: Path, out_dir: Path, until: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(out_dir), str(until)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout.strip()


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Both start at once (independent processes); "killed" stops after step 7, its last checkpoint is step 6.
    a, b = _launch(script, straight, 8), _launch(script, killed, 7)
    assert _finish(a).startswith("fresh 8")
    assert _finish(b).startswith("fresh 7")
    assert read_meta(killed / "resume.safetensors")["step"] == 6
    out = _finish(_launch(script, killed, 8))
    assert out.startswith("resumed 8"), out

    ref = load_file(str(straight / "resume.safetensors"))
    got = load_file(str(killed / "resume.safetensors"))
    assert ref.keys() == got.keys()
    assert {k.split(".")[0] for k in ref} == {"student", "ema", "optim", "rank"}
    assert "rank.source.pool_x" in ref and "rank.rng.torch_cpu" in ref
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, f"tensors differ after resume: {different[:10]}"
    meta_ref, meta_got = read_meta(straight / "resume.safetensors"), read_meta(killed / "resume.safetensors")
    assert meta_ref["step"] == meta_got["step"] == 8
    assert meta_ref["skipped_steps"] == meta_got["skipped_steps"]


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "resume.safetensors"
    atomic_save_tensors(path, {"w": torch.ones(3)}, {"step": 1})

    def crashing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("training.train.state.save_file", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save_tensors(path, {"w": torch.zeros(3)}, {"step": 2})
    assert read_meta(path)["step"] == 1
    assert torch.equal(load_file(str(path))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["resume.safetensors"], "no stray temp file"


def test_unreadable_checkpoint_fails_with_one_line(tmp_path):
    bad = tmp_path / "resume.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_meta(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_meta(tmp_path / "missing.safetensors")


def test_baseline_run_resumes_exactly_in_process(tmp_path):
    # The dataset source (epoch order, position, t and noise generators) is part of the resume state too.
    from training.diffusion import create_diffusion
    from training.distill import DistillConfig, build_run
    from training.models import create_model, get_preset

    images = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    config = DistillConfig(method="data_based", batch_size=4, iterations=6, checkpoint_every=3, lr=1e-3)

    def trainer(out_dir):
        torch.manual_seed(5)
        return build_run(config, student=create_model(get_preset("ci-student")),
                         student_diffusion=create_diffusion(steps=10), image_shape=(1, 8, 8), device="cpu",
                         real_images=images, out_dir=out_dir)

    straight = trainer(tmp_path / "a")
    straight.run()
    first = trainer(tmp_path / "b")
    first.run(until=4)
    second = trainer(tmp_path / "b")
    assert second.resume_if_possible() and second.step == 3
    second.run()
    ref = load_file(str(tmp_path / "a" / "resume.safetensors"))
    got = load_file(str(tmp_path / "b" / "resume.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
