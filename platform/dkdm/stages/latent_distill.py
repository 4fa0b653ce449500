"""Stages `pool` and `distill@<run>` of latent profiles.

The pool holds round(rho*T)*b latents (rho = 4 in the paper's latent runs), prepared by the teacher's fixed-variance
ancestral steps and stored in `distill.pool_dtype` (half precision halves its memory; the size is printed and
logged). Distillation trains on teacher steps over those latents and never encodes an image: the first stage is
loaded with a counter on its encoder, and the count (zero for every DKDM method and for data_free) is written to the
run record, MLflow and the evaluation's metrics.json.
"""
from __future__ import annotations

import json
from typing import Any

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.stages.common import (
    run_spec,
    CURVES_DIR,
    POOL_FILE,
    SYNTHETIC_FILE,
    clear_work_dir,
    keyed_work_dir,
    load_real_images,
    md5_tags,
    periodic_fd_teacher,
    require,
    student_dir,
    student_file,
    teacher_fingerprint,
    write_json,
)
from dkdm.stages.latent import (
    CallCounter,
    decode_to_images,
    diffusion_config,
    first_stage_images,
    latent_shape,
    load_first_stage,
    load_latent_teacher,
    sample_latents,
    scale_factor,
)
from dkdm.stages.latent_training import train_latent
from dkdm.tracking import start_run, student_model_name

RUN_RECORD = "mlflow_run.json"


def pool(ctx: Context, *, out: Any = None) -> None:
    from training.distill.config import PoolConfig
    from training.distill.latent import LatentTeacherStep, pool_nbytes
    from training.distill.pool import DTYPES, prepare_pool, read_pool_meta

    settings = ctx.settings
    d = settings.distill
    config = PoolConfig(rho=d.rho, batch_size=d.train.batch_size, teacher_batch_size=d.teacher_batch_size,
                        pool_dtype=d.pool_dtype, clip_denoised=False, seed=d.train.seed)
    teacher, diffusion = load_latent_teacher(ctx.device)
    shape = latent_shape(settings)
    entries = config.num_entries(diffusion.num_timesteps)
    nbytes = pool_nbytes(entries, shape, DTYPES[d.pool_dtype])
    out = out or POOL_FILE
    folder = keyed_work_dir("pool", config=config.model_dump(mode="json"), teacher=teacher_fingerprint(),
                            diffusion=diffusion.config.to_dict())
    step = LatentTeacherStep(teacher, diffusion, batch_size=d.teacher_batch_size, precision=d.train.precision)
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
    summary(f"prepare-pool: {entries} latents {shape} in {d.pool_dtype} = {nbytes} bytes ({nbytes / 2**20:.2f} MiB; "
            f"rho {d.rho}, T {diffusion.num_timesteps}, b {d.train.batch_size}) in {ctx.elapsed():.0f}s -> {out}")


def _inputs(ctx: Context, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """latent_source_and_loss arguments for `method` and what identifies them (for the resume key)."""
    from training.distill.pool import load_pool, read_pool_meta

    settings = ctx.settings
    kwargs: dict[str, Any] = {}
    identity: dict[str, Any] = {"teacher": teacher_fingerprint()}
    if method == "dynamic":
        meta = read_pool_meta(require(POOL_FILE, "dkdm prepare-pool"))
        if tuple(meta["settings"]["image_shape"]) != latent_shape(settings):
            raise DkdmError(f"{POOL_FILE} holds {tuple(meta['settings']['image_shape'])} entries, not the latents "
                            f"{latent_shape(settings)}; rerun `dkdm prepare-pool`")
        kwargs["pool"] = load_pool(POOL_FILE, device=ctx.device)
        identity["pool"] = meta.get("settings")
    if method in ("data_free", "data_limited"):
        from training.distill.baselines import read_synthetic_meta

        kwargs["synthetic_path"] = require(SYNTHETIC_FILE, "dkdm reference")
        identity["synthetic"] = read_synthetic_meta(SYNTHETIC_FILE).get("settings")
    if method in ("data_limited", "data_based"):
        images, _ = load_real_images(settings)
        kwargs["real_images"] = first_stage_images(settings, images)
        identity["real_count"] = len(images)
    return kwargs, identity


def latent_fd_metric(ctx: Context, config: Any, diffusion: Any, first_stage: Any):
    """FD' of the EMA student every eval_every steps: `distill.eval_samples` latents drawn with the evaluation's
    sampler (same seed each time), decoded, against the teacher's D' statistics (never real data)."""
    import torch

    from training.eval.early_stop import fd_metric

    settings = ctx.settings
    ev = settings.evaluate
    extractor, stats, name = periodic_fd_teacher(ctx, config)
    n = settings.distill.eval_samples
    shape = latent_shape(settings)

    def generate(model: Any):
        with torch.no_grad():
            z = sample_latents(model, diffusion, n, shape=shape, steps=ev.respacing, use_ddim=ev.use_ddim,
                               eta=ev.eta, batch_size=ev.batch_size, seed=ev.seed, device=ctx.device)
            return decode_to_images(first_stage, diffusion, z, image_size=settings.data.image_size,
                                    batch_size=ev.batch_size, device=ctx.device)

    return fd_metric(generate, extractor, stats, metric_name=name, batch_size=settings.features.batch_size)


def distill(ctx: Context, run_name: str, *, allowed: tuple[str, ...] | None) -> None:
    from training.distill.config import POOL_METHODS
    from training.distill.latent import latent_source_and_loss

    settings = ctx.settings
    spec = run_spec(settings, run_name, allowed)
    preset = settings.distill.student_for(run_name)
    config = settings.distill.config_for(run_name)
    teacher, diffusion = load_latent_teacher(ctx.device)
    first_stage = load_first_stage(ctx.device)
    # Built before the counters: the periodic FD' decodes samples, it never encodes.
    eval_fn = latent_fd_metric(ctx, config, diffusion, first_stage) if config.eval_every else None
    encoder, decoder = CallCounter(first_stage.encoder), CallCounter(first_stage.decoder)
    kwargs, identity = _inputs(ctx, spec.method)
    source, loss_fn = latent_source_and_loss(config, teacher=teacher, diffusion=diffusion,
                                             latent_shape=latent_shape(settings), device=ctx.device,
                                             first_stage=first_stage, **kwargs)
    stage = "distill" if spec.method in POOL_METHODS else "train"
    out_file = student_file(run_name)
    with start_run(settings, stage=stage, run_name=f"{run_name}-{preset}", method=spec.method, student=preset,
                   tags={**md5_tags(None), "dkdm.run": run_name, "dkdm.space": "latent"}) as tracker:
        result = train_latent(
            ctx, name=f"student-{run_name}", preset=preset, config=config, source=source, loss_fn=loss_fn,
            out_file=out_file, tracker=tracker, loss_csv=CURVES_DIR / f"{run_name}.csv",
            provenance={"source": f"dkdm {stage}", "profile": settings.profile, "run": run_name,
                        "method": spec.method, "teacher": settings.teacher.preset},
            diffusion=diffusion_config(settings, scale_factor()), extra_key=identity, eval_fn=eval_fn,
        )
        # Counted over the whole stage (sources built above included): the data-limited set is encoded once,
        # data-based training encodes every batch, everything else never touches the encoder.
        counts = {"first_stage_encoder_calls": float(encoder.calls),
                  "first_stage_encoded_images": float(encoder.images),
                  "first_stage_decoder_calls": float(decoder.calls)}
        final = {k: float(result[k]) for k in ("train_seconds_per_100_iters", "skipped_steps")
                 if result[k] is not None}
        tracker.log_metrics({**final, **counts}, result["steps"])
        tracker.log_artifact(CURVES_DIR / f"{run_name}.csv")
        if settings.tracking.register_students:
            tracker.register_model(
                student_model_name(settings.profile, spec.method), [out_file, out_file.with_suffix(".json")],
                tags={"dkdm.run": run_name, "dkdm.student": preset, "dkdm.method": spec.method,
                      "dkdm.profile": settings.profile, "format": "safetensors", "dkdm.space": "latent"},
                description=f"latent {preset} by {spec.method} from {settings.teacher.preset} ({settings.profile})",
            )
        write_json(student_dir(run_name) / RUN_RECORD, {
            "run_id": tracker.run_id, "steps": result["steps"], "seconds": result["seconds"],
            "train_seconds_per_100_iters": result["train_seconds_per_100_iters"], "best_step": result["best_step"],
            "stopped_early": result["stopped_early"], **{k: int(v) for k, v in counts.items()}})
    encoder.remove()
    decoder.remove()
    loss = f", final loss {result['final_loss']:.4f}" if result["final_loss"] is not None else ""
    summary(f"{stage} {run_name}: latent {preset} by {spec.method}, {result['steps']} steps in "
            f"{result['seconds']:.0f}s{loss}, first-stage encoder calls {encoder.calls} -> {out_file}")
