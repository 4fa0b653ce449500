"""Stage `distill@<run>`: one student of distill.runs, by DKDM (dynamic / shuffled / iterative, the teacher in the
loop) or by a baseline (data_free / data_limited / data_based, ordinary training on an image set).

The student is written to outputs/students/<run>/ (safetensors + JSON sidecar, EMA weights by default) and
registered in the MLflow model registry as `dkdm-student-<profile>-<method>`.
"""
from __future__ import annotations

from typing import Any

from dkdm.console import Context, summary
from dkdm.teacher_compat import check_teacher_compat
from dkdm.stages.common import (
    run_spec,
    CURVES_DIR,
    POOL_FILE,
    SYNTHETIC_FILE,
    load_real_images,
    load_teacher,
    make_diffusion,
    periodic_fd_teacher,
    md5_tags,
    nhwc_to_model,
    require,
    student_dir,
    student_file,
    teacher_fingerprint,
    write_json,
)
from dkdm.stages.training import resume_state_file, train_network
from dkdm.tracking import start_run, student_model_name

RUN_RECORD = "mlflow_run.json"


def _inputs(ctx: Context, method: str, device: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher-made source of `method` as build_run arguments, and what identifies it (for resume keys)."""
    from training.distill.config import POOL_METHODS

    settings = ctx.settings
    kwargs: dict[str, Any] = {}
    identity: dict[str, Any] = {"teacher": teacher_fingerprint()}
    if method in POOL_METHODS:
        kwargs["teacher"], _ = load_teacher(device)
        if method == "dynamic":
            from training.distill.pool import read_pool_meta

            kwargs["pool_path"] = require(POOL_FILE, "dkdm prepare-pool")
            identity["pool"] = read_pool_meta(POOL_FILE).get("settings")
        return kwargs, identity
    if method in ("data_free", "data_limited"):
        from training.distill.baselines import load_synthetic, read_synthetic_meta

        require(SYNTHETIC_FILE, "dkdm reference")
        kwargs["synthetic_images"] = load_synthetic(SYNTHETIC_FILE)
        identity["synthetic"] = read_synthetic_meta(SYNTHETIC_FILE).get("settings")
    if method in ("data_limited", "data_based"):
        images, _ = load_real_images(settings)
        kwargs["real_images"] = nhwc_to_model(images)
        identity["real_count"] = len(images)
    return kwargs, identity


def early_stop_metric(ctx: Context, config: Any):
    """FD' on a small sample budget every eval_every steps (selection against the teacher's D', never real data,
    so the student stays data-free); None when the run does not evaluate periodically."""
    if not config.eval_every:
        return None
    from training.eval.early_stop import make_fd_metric

    settings = ctx.settings
    extractor, stats, name = periodic_fd_teacher(ctx, config)
    channels, size = settings.data.channels, settings.data.image_size
    return make_fd_metric(extractor, stats, make_diffusion(settings, settings.evaluate.respacing),
                          n_samples=settings.distill.eval_samples, batch_size=settings.evaluate.batch_size,
                          seed=settings.evaluate.seed, device=ctx.device, metric_name=name,
                          image_size=size, channels=channels)


def run(ctx: Context, run_name: str, *, allowed: tuple[str, ...] | None) -> None:
    settings = ctx.settings
    check_teacher_compat(settings)  # before anything is written: a teacher of another T refused in one line
    if settings.space == "latent":
        from dkdm.stages.latent_distill import distill as latent_distill

        return latent_distill(ctx, run_name, allowed=allowed)
    spec = run_spec(settings, run_name, allowed)
    preset = settings.distill.student_for(run_name)
    config = settings.distill.config_for(run_name)
    kwargs, identity = _inputs(ctx, spec.method, ctx.device)
    eval_fn = early_stop_metric(ctx, config)
    out_file = student_file(run_name)
    stage = "distill" if spec.method in ("dynamic", "shuffled", "iterative") else "train"
    with start_run(settings, stage=stage, run_name=f"{run_name}-{preset}", method=spec.method, student=preset,
                   tags={**md5_tags(None), "dkdm.run": run_name},
                   resume_state=resume_state_file(settings, f"student-{run_name}", preset, config, identity)) as tracker:
        result = train_network(
            ctx, name=f"student-{run_name}", preset=preset, config=config, out_file=out_file, tracker=tracker,
            loss_csv=CURVES_DIR / f"{run_name}.csv", extra_key=identity,
            provenance={"source": f"dkdm {stage}", "profile": settings.profile, "run": run_name,
                        "method": spec.method, "teacher": settings.teacher.preset},
            eval_fn=eval_fn, **kwargs,
        )
        final = {k: result[k] for k in ("train_seconds_per_100_iters", "skipped_steps") if result[k] is not None}
        tracker.log_metrics({k: float(v) for k, v in final.items()}, result["steps"])
        tracker.log_artifact(CURVES_DIR / f"{run_name}.csv")
        if settings.tracking.register_students:
            tracker.register_model(
                student_model_name(settings.profile, spec.method), [out_file, out_file.with_suffix(".json")],
                tags={"dkdm.run": run_name, "dkdm.student": preset, "dkdm.method": spec.method,
                      "dkdm.profile": settings.profile, "format": "safetensors"},
                description=f"{preset} by {spec.method} from {settings.teacher.preset} ({settings.profile})",
            )
        write_json(student_dir(run_name) / RUN_RECORD, {
            "run_id": tracker.run_id, "steps": result["steps"], "seconds": result["seconds"],
            "train_seconds_per_100_iters": result["train_seconds_per_100_iters"],
            "best_step": result["best_step"], "stopped_early": result["stopped_early"]})
    loss = f", final loss {result['final_loss']:.4f}" if result["final_loss"] is not None else ""
    summary(f"{stage} {run_name}: {preset} by {spec.method}, {result['steps']} steps in {result['seconds']:.0f}s"
            f"{loss} -> {out_file}")
