"""Stage `pool`: the dynamic-iterative pool of round(rho*T)*b teacher states (the paper's Sec. 3.3), resumable,
in either space.

The pool holds model inputs (images, or latents: rho = 4 in the paper's latent runs) prepared by the teacher's
ancestral steps and stored in `distill.pool_dtype` (half precision halves its memory; the size is printed and
logged). Preparation writes into `.dkdm/work/pool-<hash>/` (DVC empties a stage's outs before it reruns, which
would lose a partial pool) and the finished file is then moved into the DVC out.

`distill.pool_prep` chooses how the states are reached (the paper's full chains, or at most K teacher calls each
on a respaced grid); the file and the run record the procedure and the teacher image-steps it spent. Under a job of
W processes every rank prepares its own pool of round(rho*T)*b states in parallel (the official code's per-process
pool), rank 0 writes them as one file of W shards, and a distillation must run with the same W.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

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
from dkdm.stages.ranks import job_of, main_run
from dkdm.teacher_compat import check_teacher_compat
from training.train.distributed import DistContext

if TYPE_CHECKING:
    from training.distill.config import PoolPrep


def run(ctx: Context, *, out: Path | None = None, dist: DistContext | None = None) -> None:
    from training.distill.pool import DTYPES, POOL_WORK_METRIC, pool_nbytes, prepare_pool, read_pool_meta
    from training.distill.teacher import DiffusionTeacherStep

    settings = ctx.settings
    check_teacher_compat(settings)  # before anything is written: a teacher of another T refused in one line
    d = settings.distill
    space = space_for(settings)
    base = pool_distill_config(settings)
    config = base.pool_config()
    job = job_of(ctx, dist)
    teacher, diffusion = space.load_teacher(job.device)
    shape = space.model_shape()
    entries = config.num_entries(diffusion.num_timesteps)
    nbytes = pool_nbytes(entries, shape, DTYPES[config.pool_dtype])
    out = out or POOL_FILE
    folder = keyed_work_dir("pool", config=config.model_dump(mode="json"), teacher=teacher_fingerprint(),
                            diffusion=diffusion.config.to_dict(), world_size=job.world_size)
    step = DiffusionTeacherStep(teacher, diffusion, clip_denoised=config.clip_denoised,
                                batch_size=config.teacher_batch_size, precision=base.precision)
    with main_run(ctx.settings, job, stage="pool", run_name=f"pool-rho{d.rho}", method="dynamic",
                  tags=md5_tags(None)) as tracker:
        tracker.log_params({"pool.entries": entries, "pool.bytes": nbytes,
                            "pool.procedure": prep_label(config.prep)})
        staged = prepare_pool(teacher, diffusion, config, folder / "pool.safetensors", image_shape=shape,
                              device=job.device, progress=ctx.progress_enabled, resume=True, teacher_step=step,
                              ctx=job)
        if not job.is_main:
            return
        meta = read_pool_meta(staged)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(out)
        work = int(meta["teacher_image_steps"])
        tracker.log_metrics({"pool_entries": float(entries * job.world_size), "pool_bytes": float(nbytes),
                             "pool_seconds": ctx.elapsed(), POOL_WORK_METRIC: float(work)}, 0)
        tracker.set_tags({"dkdm.pool.settings": json.dumps(meta.get("settings", {}), sort_keys=True)[:5000]})
    clear_work_dir(folder)
    ranks = f" x {job.world_size} ranks" if job.enabled else ""
    summary(f"prepare-pool: {entries}{ranks} {space.inputs_name} {shape} in {config.pool_dtype} = {nbytes} bytes per "
            f"rank ({nbytes / 2**20:.2f} MiB; rho {d.rho}, T {diffusion.num_timesteps}, b {d.train.batch_size}), "
            f"{prep_label(config.prep)}: {work} teacher image-steps in {ctx.elapsed():.0f}s -> {out}")


def prep_label(prep: PoolPrep) -> str:
    return "paper chains" if prep.procedure == "paper" else f"respaced {prep.sampler} K={prep.steps}"
