"""Stages `reference`, `evaluate_teacher` and `evaluate@<run>` of latent profiles: sample latents, decode, score.

Scores are computed on decoded images at the data's size, in the profile's feature space (digits classifier on the
CPU profiles, Inception on the paper ones), against the same real statistics as the pixel pipeline. The reference
set D' is the teacher's DDIM samples (eta 0; `reference.respacing` steps, 100 in the paper's data-free latent
baseline): its latents are the data-free baselines' training set, its decoded images the FD'/FID' reference.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dkdm.console import Context, summary
from dkdm.lineage import locked_md5
from dkdm.stages.common import (
    REAL_STATS_FILE,
    REFERENCE_DIR,
    REFERENCE_METRICS,
    SYNTHETIC_FILE,
    TEACHER_FILE,
    TEACHER_STATS_FILE,
    clear_work_dir,
    keyed_work_dir,
    load_real_images,
    make_extractor,
    md5_tags,
    read_json,
    require,
    student_dir,
    teacher_fingerprint,
    write_json,
)
from dkdm.stages.latent import decode_to_images, latent_shape, load_first_stage, load_latent_model, sample_latents
from dkdm.tracking import start_run


def _grid_scale(settings: Any) -> int:
    return max(1, 64 // settings.data.image_size)


def reference(ctx: Context) -> None:
    from training.distill.baselines import load_synthetic
    from training.distill.latent import synthesize_latents
    from training.eval.evaluate import noise_floor
    from training.eval.sampling import save_grid
    from training.eval.stats import compute_reference_stats

    settings = ctx.settings
    ref = settings.reference
    real, _ = load_real_images(settings)
    count = ref.num_samples or len(real)
    teacher, diffusion, _ = load_latent_model(require(TEACHER_FILE, "dkdm teacher"), ctx.device)
    first_stage = load_first_stage(ctx.device)
    steps = int(ref.respacing) if ref.respacing else diffusion.num_timesteps
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    with start_run(settings, stage="reference", run_name="reference-teacher-samples", method="teacher",
                   tags={**md5_tags(None), "dkdm.space": "latent"}) as tracker:
        # Staged in a work folder: DVC empties the out before a rerun, which would lose a partial set.
        folder = keyed_work_dir("reference", seed=ref.seed, count=count, teacher=teacher_fingerprint(), steps=steps,
                                diffusion=diffusion.config.to_dict(), batch=ref.batch_size)
        staged = synthesize_latents(teacher, diffusion, count, folder / SYNTHETIC_FILE.name,
                                    latent_shape=latent_shape(settings), batch_size=ref.batch_size,
                                    device=ctx.device, seed=ref.seed, steps=steps, progress=ctx.progress_enabled)
        staged.replace(SYNTHETIC_FILE)
        clear_work_dir(folder)
        samples = decode_to_images(first_stage, diffusion, load_synthetic(SYNTHETIC_FILE),
                                   image_size=settings.data.image_size, batch_size=ref.batch_size, device=ctx.device)
        extractor = make_extractor(settings, ctx.device)
        compute_reference_stats(samples, extractor, TEACHER_STATS_FILE, batch_size=settings.features.batch_size,
                                seed=ref.seed, name="teacher", progress=ctx.progress_enabled)
        floor = noise_floor(samples, extractor=extractor, seed=ref.seed, batch_size=settings.features.batch_size)
        metrics = {**floor, "teacher_samples": float(count), "teacher_sampling_steps": float(steps)}
        write_json(REFERENCE_METRICS, metrics)
        tracker.log_metrics(metrics, 0)
        grid = save_grid(REFERENCE_DIR / "grid.png", samples[: settings.evaluate.grid_size], nrow=8,
                         scale=_grid_scale(settings))
        tracker.log_artifact(grid, "samples")
    floor_text = ", ".join(f"{k} {v:.3f}" for k, v in floor.items())
    summary(f"reference: {count} teacher latents (DDIM {steps}, eta 0), decoded, {floor_text} -> {REFERENCE_DIR}")


def evaluate(ctx: Context, target: dict[str, Any], *, run: str | None) -> None:
    """Sample the target's latents with the profile's sampler, decode, score; writes the pixel stage's files."""
    import torch

    from dkdm.stages.evaluate import _backfill_lineage
    from training.eval.costs import device_name, peak_memory_mb, reset_peak_memory
    from training.eval.evaluate import evaluate_samples
    from training.eval.sampling import save_grid, save_samples_npz
    from training.eval.stats import load_reference_stats

    settings = ctx.settings
    ev = settings.evaluate
    extractor = make_extractor(settings, ctx.device)
    real_stats = load_reference_stats(require(REAL_STATS_FILE, "dkdm features"), expected_space=extractor.space)
    teacher_stats = load_reference_stats(require(TEACHER_STATS_FILE, "dkdm reference"), expected_space=extractor.space)
    model, diffusion, _ = load_latent_model(target["file"], ctx.device, ema=ev.use_ema)
    first_stage = load_first_stage(ctx.device)
    shape = latent_shape(settings)
    steps = int(ev.respacing) if ev.respacing else diffusion.num_timesteps

    def generate(n: int, seed: int):
        z = sample_latents(model, diffusion, n, shape=shape, steps=ev.respacing, use_ddim=ev.use_ddim, eta=ev.eta,
                           batch_size=ev.batch_size, seed=seed, device=ctx.device)
        return decode_to_images(first_stage, diffusion, z, image_size=settings.data.image_size,
                                batch_size=ev.batch_size, device=ctx.device)

    out_dir: Path = target["out"]
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = {"dkdm.dvc.teacher_md5": locked_md5("teacher", str(TEACHER_FILE.parent)), "dkdm.run": target["name"],
            "dkdm.space": "latent"}
    with start_run(settings, stage="evaluate", run_name=f"evaluate-{target['name']}", method=target["method"],
                   student=target["preset"], tags={k: v for k, v in tags.items() if v}) as tracker:
        if run is not None:
            tracker.set_tags(_backfill_lineage(ctx, run, tracker))
        reset_peak_memory(ctx.device)
        with torch.no_grad():
            samples = generate(ev.num_samples, ev.seed)
        peak = peak_memory_mb(ctx.device)
        save_samples_npz(out_dir / "samples.npz", samples)
        grid = save_grid(out_dir / "grid.png", samples[: ev.grid_size], nrow=8, scale=_grid_scale(settings))
        metrics = evaluate_samples(samples, extractor=extractor, real_stats=real_stats, teacher_stats=teacher_stats,
                                   batch_size=settings.features.batch_size, seed=ev.seed)
        if ev.measure_costs:
            # Seconds for 256 images, sampling and decoding included (decoding is part of a latent model's cost).
            n = min(ev.batch_size, 256)
            started = time.perf_counter()
            with torch.no_grad():
                generate(n, ev.seed + 1)
            metrics["gen_seconds_256"] = (time.perf_counter() - started) * 256 / n
        metrics["peak_memory_mb"] = peak
        record = student_dir(run) / "mlflow_run.json" if run is not None else None
        if record is not None and record.is_file():
            data = read_json(record)
            for key in ("train_seconds_per_100_iters", "first_stage_encoder_calls", "first_stage_encoded_images"):
                if data.get(key) is not None:
                    metrics[key] = float(data[key])
        metrics["sampling_steps"] = float(steps)
        metrics["num_samples"] = float(ev.num_samples)
        write_json(out_dir / "metrics.json", {k: float(v) for k, v in sorted(metrics.items())})
        write_json(out_dir / "info.json", {"device_name": device_name(ctx.device), "checkpoint": str(target["file"]),
                                           "method": target["method"], "preset": target["preset"],
                                           "space": "latent", "sampler": "ddim" if ev.use_ddim else "ancestral"})
        tracker.set_tags({"device_name": device_name(ctx.device)})
        tracker.log_metrics(metrics, 0)
        tracker.log_artifact(grid, "samples")
        tracker.log_artifact(out_dir / "metrics.json", "evaluation")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())
                      if k.startswith(("fd", "fid", "precision", "recall", "is")))
    sampler = f"DDIM {steps} (eta {ev.eta})" if ev.use_ddim else f"{steps} ancestral steps"
    summary(f"evaluate {target['name']}: {ev.num_samples} latent samples, {sampler}, decoded: {shown} -> "
            f"{out_dir / 'metrics.json'}")
