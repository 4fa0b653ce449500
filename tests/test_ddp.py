"""Multi-process DKDM under torchrun with gloo on CPU: sharded pool, distributed preparation, rank-0-only files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.distill import load_pool, read_pool_meta
from training.train.state import read_meta

REPO = Path(__file__).resolve().parents[1]

RANK_SCRIPT = r"""
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from training.diffusion import create_diffusion
from training.distill import DistillConfig, build_run, prepare_pool
from training.models import create_model, get_preset
from training.train import init_distributed, shutdown_distributed

out = Path(sys.argv[1])
ctx = init_distributed("cpu")
torch.manual_seed(0)
teacher = create_model(get_preset("ci-teacher"))
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in teacher.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
torch.manual_seed(2)
student = create_model(get_preset("ci-student"))
diffusion = create_diffusion(steps=10)
config = DistillConfig(method="dynamic", rho=0.5, batch_size=4, teacher_batch_size=8, iterations=4,
                       checkpoint_every=4, lr=1e-3, log_every=2)
pool_path = prepare_pool(teacher, diffusion, config.pool_config(), out / "pool.safetensors", image_shape=(1, 8, 8),
                         device="cpu", progress=False, ctx=ctx)
trainer = build_run(config, student=student, student_diffusion=diffusion, image_shape=(1, 8, 8), device="cpu",
                    teacher=teacher, teacher_diffusion=diffusion, pool_path=pool_path, out_dir=out / "run", ctx=ctx)
initial_shard = trainer.source.pool.x.clone()
trainer.run()
# Test harness output (not library behaviour): what each rank ended with.
state = {f"param.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
state["initial_shard"] = initial_shard
state["final_shard"] = trainer.source.pool.x.clone()
(out / "ranks").mkdir(exist_ok=True)
save_file(state, str(out / "ranks" / f"rank{ctx.rank}.safetensors"))
shutdown_distributed(ctx)
"""


def test_two_process_gloo_distillation(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Preparation was split: one file, written once, holding both ranks' contiguous shards.
    meta = read_pool_meta(tmp_path / "pool.safetensors")["settings"]
    assert (meta["world_size"], meta["per_rank_entries"], meta["num_entries"]) == (2, 20, 40)
    shards = [load_pool(tmp_path / "pool.safetensors", rank=r, world_size=2).x for r in (0, 1)]
    r0, r1 = (load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in (0, 1))
    assert torch.equal(r0["initial_shard"], shards[0]) and torch.equal(r1["initial_shard"], shards[1])
    assert not torch.equal(r0["initial_shard"], r1["initial_shard"]), "ranks must draw different noise"

    # DDP kept the replicas identical; each rank advanced only its own shard.
    params = [k for k in r0 if k.startswith("param.")]
    assert params and all(torch.equal(r0[k], r1[k]) for k in params)
    assert not torch.equal(r0["final_shard"], r0["initial_shard"])

    # Rank 0 wrote one checkpoint holding every rank's pool shard and RNG state.
    ckpt = load_file(str(tmp_path / "run" / "resume.safetensors"))
    assert read_meta(tmp_path / "run" / "resume.safetensors")["world_size"] == 2
    assert ckpt["rank.source.pool_x"].shape == (2, 20, 1, 8, 8)
    assert torch.equal(ckpt["rank.source.pool_x"][1], r1["final_shard"])
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.partial"))
