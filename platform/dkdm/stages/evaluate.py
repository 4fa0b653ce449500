"""Stage `evaluate@<run>` (and `evaluate_teacher`): sample, score in the profile's feature space, measure costs.

Writes outputs/evaluation/<name>/{samples.npz, grid.png, metrics.json}; metrics.json is what `dvc metrics show`
reads, with the contract's metric and cost names (docs/CONTRACTS.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.lineage import locked_md5
from dkdm.teacher_compat import check_evaluation
from dkdm.stages.common import (
    REAL_STATS_FILE,
    STUDENTS_DIR,
    TEACHER_FILE,
    TEACHER_STATS_FILE,
    evaluation_dir,
    make_extractor,
    read_json,
    require,
    student_dir,
    student_file,
    write_json,
)
from dkdm.tracking import start_run, student_model_name


def _target(ctx: Context, run: str | None, checkpoint: Path | None, teacher: bool) -> dict[str, Any]:
    settings = ctx.settings
    chosen = sum([run is not None, checkpoint is not None, teacher])
    if chosen != 1:
        raise DkdmError("evaluate: give exactly one of --run NAME, --teacher or --checkpoint PATH")
    if teacher:
        return {"name": "teacher", "file": require(TEACHER_FILE, "dkdm teacher"), "method": "teacher",
                "preset": settings.teacher.preset, "out": evaluation_dir("teacher")}
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise DkdmError(f"--checkpoint: file {checkpoint} does not exist")
        return {"name": checkpoint.stem, "file": checkpoint, "method": None, "preset": None,
                "out": Path("evaluations") / checkpoint.stem}
    runs = settings.distill.runs
    if run not in runs:
        raise DkdmError(f"--run: {run!r} is not in distill.runs ({', '.join(runs) or 'none defined'})")
    return {"name": run, "file": require(student_file(run), f"dkdm distill --run {run}"),
            "method": runs[run].method, "preset": settings.distill.student_for(run), "out": evaluation_dir(run)}


def _backfill_lineage(ctx: Context, run: str, tracker: Any) -> dict[str, str]:
    """The distill stage cannot know its own dvc.lock hash; once it is locked, tag its run and model version."""
    md5 = locked_md5(f"distill@{run}", str(STUDENTS_DIR))
    record = student_dir(run) / "mlflow_run.json"
    if not md5 or not record.is_file() or not ctx.settings.tracking.enabled:
        return {"dkdm.dvc.student_md5": md5} if md5 else {}
    run_id = read_json(record).get("run_id")
    client = getattr(tracker, "client", None)
    if run_id and client is not None:
        try:
            client.set_tag(run_id, "dkdm.dvc.student_md5", md5)
            name = student_model_name(ctx.settings.profile, ctx.settings.distill.runs[run].method)
            for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
                client.set_model_version_tag(name, version.version, "dkdm.dvc.student_md5", md5)
        except Exception:  # noqa: BLE001 - lineage tags are a courtesy; the evaluation itself must go on
            pass
    return {"dkdm.dvc.student_md5": md5}


def run(ctx: Context, *, run: str | None = None, checkpoint: Path | None = None, teacher: bool = False) -> None:
    from training.eval.costs import device_name, measure_generation, peak_memory_mb, reset_peak_memory
    from training.eval.evaluate import evaluate_samples
    from training.eval.sampling import generate_samples, load_sampler, save_grid, save_samples_npz
    from training.eval.stats import load_reference_stats

    settings = ctx.settings
    ev = settings.evaluate
    target = _target(ctx, run, checkpoint, teacher)
    check_evaluation(settings, target["file"], pipeline_file=target["method"] is not None)  # before any write
    if settings.space == "latent":
        from dkdm.stages.latent_eval import evaluate as latent_evaluate

        return latent_evaluate(ctx, target, run=run)
    extractor = make_extractor(settings, ctx.device)
    real_stats = load_reference_stats(require(REAL_STATS_FILE, "dkdm features"), expected_space=extractor.space)
    teacher_stats = load_reference_stats(require(TEACHER_STATS_FILE, "dkdm reference"), expected_space=extractor.space)
    respacing = f"ddim{ev.respacing}" if ev.use_ddim and ev.respacing.isdigit() else ev.respacing
    model, diffusion = load_sampler(target["file"], respacing=respacing, ema=ev.use_ema, device=ctx.device)
    out_dir: Path = target["out"]
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = {"dkdm.dvc.teacher_md5": locked_md5("teacher", str(TEACHER_FILE.parent)), "dkdm.run": target["name"]}
    with start_run(settings, stage="evaluate", run_name=f"evaluate-{target['name']}", method=target["method"],
                   student=target["preset"], tags={k: v for k, v in tags.items() if v}) as tracker:
        if run is not None:
            tracker.set_tags(_backfill_lineage(ctx, run, tracker))
        reset_peak_memory(ctx.device)
        samples = generate_samples(model, diffusion, ev.num_samples, batch_size=ev.batch_size, seed=ev.seed,
                                   device=ctx.device, use_ddim=ev.use_ddim, eta=ev.eta,
                                   clip_denoised=ev.clip_denoised, progress=ctx.progress_enabled)
        peak = peak_memory_mb(ctx.device)
        save_samples_npz(out_dir / "samples.npz", samples)
        grid = save_grid(out_dir / "grid.png", samples[: ev.grid_size], nrow=8,
                         scale=max(1, 64 // settings.data.image_size))
        metrics = evaluate_samples(samples, extractor=extractor, real_stats=real_stats, teacher_stats=teacher_stats,
                                   batch_size=settings.features.batch_size, seed=ev.seed)
        if ev.measure_costs:
            metrics.update(measure_generation(model, diffusion, batch_size=min(ev.batch_size, 256),
                                              device=ctx.device, seed=ev.seed, use_ddim=ev.use_ddim))
        metrics["peak_memory_mb"] = peak
        record = student_dir(run) / "mlflow_run.json" if run is not None else None
        if record is not None and record.is_file():
            train_speed = read_json(record).get("train_seconds_per_100_iters")
            if train_speed is not None:
                metrics["train_seconds_per_100_iters"] = float(train_speed)
        metrics["sampling_steps"] = float(diffusion.num_timesteps)
        metrics["num_samples"] = float(ev.num_samples)
        write_json(out_dir / "metrics.json", {k: float(v) for k, v in sorted(metrics.items())})
        write_json(out_dir / "info.json", {"device_name": device_name(ctx.device), "checkpoint": str(target["file"]),
                                           "method": target["method"], "preset": target["preset"]})
        tracker.set_tags({"device_name": device_name(ctx.device)})
        tracker.log_metrics(metrics, 0)
        tracker.log_artifact(grid, "samples")
        tracker.log_artifact(out_dir / "metrics.json", "evaluation")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if k.startswith(("fd", "fid", "precision",
                                                                                        "recall", "is")))
    summary(f"evaluate {target['name']}: {ev.num_samples} samples, {diffusion.num_timesteps} steps: {shown} -> "
            f"{out_dir / 'metrics.json'}")
