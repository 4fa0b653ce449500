"""Stage `pool`: the dynamic-iterative pool of round(rho*T)*b teacher states (METHOD §4), resumable.

Preparation writes into `.dkdm/work/pool-<hash>/` (DVC empties a stage's outs before it reruns, which would
lose a partial pool) and the finished file is then moved into the DVC out.
"""
from __future__ import annotations

import json
from pathlib import Path

from dkdm.console import Context, summary
from dkdm.teacher_compat import check_teacher_compat
from dkdm.stages.common import (
    POOL_FILE,
    clear_work_dir,
    image_shape,
    keyed_work_dir,
    load_teacher,
    make_diffusion,
    md5_tags,
    teacher_fingerprint,
)
from dkdm.tracking import start_run


def run(ctx: Context, *, out: Path | None = None) -> None:
    from training.distill.config import PoolConfig
    from training.distill.pool import prepare_pool, read_pool_meta

    settings = ctx.settings
    check_teacher_compat(settings)  # before anything is written: a teacher of another T refused in one line
    if settings.space == "latent":
        from dkdm.stages.latent_distill import pool as latent_pool

        return latent_pool(ctx, out=out)
    d = settings.distill
    config = PoolConfig(rho=d.rho, batch_size=d.train.batch_size, teacher_batch_size=d.teacher_batch_size,
                        pool_dtype=d.pool_dtype, clip_denoised=d.clip_denoised, seed=d.train.seed)
    diffusion = make_diffusion(settings)
    entries = config.num_entries(diffusion.num_timesteps)
    out = out or POOL_FILE
    teacher, _ = load_teacher(ctx.device)
    folder = keyed_work_dir("pool", config=config.model_dump(mode="json"), teacher=teacher_fingerprint(),
                            diffusion=settings.diffusion.to_dict())
    with start_run(settings, stage="pool", run_name=f"pool-rho{d.rho}", method="dynamic",
                   tags=md5_tags(None)) as tracker:
        tracker.log_params({"pool.entries": entries})
        staged = prepare_pool(teacher, diffusion, config, folder / "pool.safetensors",
                              image_shape=image_shape(settings), device=ctx.device,
                              progress=ctx.progress_enabled, resume=True)
        meta = read_pool_meta(staged)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(out)
        tracker.log_metrics({"pool_entries": float(entries), "pool_seconds": ctx.elapsed()}, 0)
        tracker.set_tags({"dkdm.pool.settings": json.dumps(meta.get("settings", {}), sort_keys=True)[:5000]})
    clear_work_dir(folder)
    summary(f"prepare-pool: {entries} entries (rho {d.rho}, T {diffusion.num_timesteps}, b {d.train.batch_size}) "
            f"in {ctx.elapsed():.0f}s -> {out}")
