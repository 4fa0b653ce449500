"""Stage `pool`: the dynamic-iterative pool of round(rho*T)*b teacher states (the paper's Sec. 3.3), resumable,
in either space.

The pool holds model inputs (images, or latents: rho = 4 in the paper's latent runs) prepared by the teacher's
ancestral steps and stored in `distill.pool_dtype` (half precision halves its memory; the size is printed and
logged). Preparation writes into `.dkdm/work/pool-<hash>/` (DVC empties a stage's outs before it reruns, which
would lose a partial pool) and the finished file is then moved into the DVC out.
"""
from __future__ import annotations

import json
from pathlib import Path

from dkdm.console import Context, summary
from dkdm.spaces import space_for
from dkdm.stages.common import (
    POOL_FILE,
    clear_work_dir,
    keyed_work_dir,
    md5_tags,
    pool_distill_config,
    teacher_fingerprint,
)
from dkdm.teacher_compat import check_teacher_compat
from dkdm.tracking import start_run


def run(ctx: Context, *, out: Path | None = None) -> None:
    from training.distill.pool import DTYPES, pool_nbytes, prepare_pool, read_pool_meta
    from training.distill.teacher import DiffusionTeacherStep

    settings = ctx.settings
    check_teacher_compat(settings)  # before anything is written: a teacher of another T refused in one line
    d = settings.distill
    space = space_for(settings)
    base = pool_distill_config(settings)
    config = base.pool_config()
    teacher, diffusion = space.load_teacher(ctx.device)
    shape = space.model_shape()
    entries = config.num_entries(diffusion.num_timesteps)
    nbytes = pool_nbytes(entries, shape, DTYPES[config.pool_dtype])
    out = out or POOL_FILE
    folder = keyed_work_dir("pool", config=config.model_dump(mode="json"), teacher=teacher_fingerprint(),
                            diffusion=diffusion.config.to_dict())
    step = DiffusionTeacherStep(teacher, diffusion, clip_denoised=config.clip_denoised,
                                batch_size=config.teacher_batch_size, precision=base.precision)
    with start_run(settings, stage="pool", run_name=f"pool-rho{d.rho}", method="dynamic",
                   tags=md5_tags(None)) as tracker:
        tracker.log_params({"pool.entries": entries, "pool.bytes": nbytes})
        staged = prepare_pool(teacher, diffusion, config, folder / "pool.safetensors", image_shape=shape,
                              device=ctx.device, progress=ctx.progress_enabled, resume=True, teacher_step=step)
        meta = read_pool_meta(staged)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(out)
        tracker.log_metrics({"pool_entries": float(entries), "pool_bytes": float(nbytes),
                             "pool_seconds": ctx.elapsed()}, 0)
        tracker.set_tags({"dkdm.pool.settings": json.dumps(meta.get("settings", {}), sort_keys=True)[:5000]})
    clear_work_dir(folder)
    summary(f"prepare-pool: {entries} {space.inputs_name} {shape} in {config.pool_dtype} = {nbytes} bytes "
            f"({nbytes / 2**20:.2f} MiB; rho {d.rho}, T {diffusion.num_timesteps}, b {d.train.batch_size}) in "
            f"{ctx.elapsed():.0f}s -> {out}")
