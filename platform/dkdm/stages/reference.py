"""Stage `reference`: the teacher's own samples D'.

One set serves three purposes, as in the paper: the reference of FD'/FID' (Table 11), the noise floor (FD between
two random halves of it), and the synthetic training set of the data-free / data-limited baselines (Table 4).
"""
from __future__ import annotations

from dkdm.console import Context, summary
from dkdm.teacher_compat import check_teacher_compat
from dkdm.stages.common import (
    REFERENCE_DIR,
    REFERENCE_METRICS,
    SYNTHETIC_FILE,
    TEACHER_STATS_FILE,
    image_shape,
    load_real_images,
    load_teacher,
    make_diffusion,
    make_extractor,
    clear_work_dir,
    keyed_work_dir,
    md5_tags,
    teacher_fingerprint,
    write_json,
)
from dkdm.tracking import start_run


def teacher_sample_images(path=SYNTHETIC_FILE):
    """The synthetic set as uint8 NHWC (what feature extractors take)."""
    from training.distill.baselines import load_synthetic

    return load_synthetic(path).permute(0, 2, 3, 1).contiguous().numpy()


def run(ctx: Context) -> None:
    from training.distill.baselines import synthesize_dataset
    from training.eval.evaluate import noise_floor
    from training.eval.stats import compute_reference_stats

    settings = ctx.settings
    check_teacher_compat(settings)  # before anything is written: a teacher of another T refused in one line
    if settings.space == "latent":
        from dkdm.stages.latent_eval import reference as latent_reference

        return latent_reference(ctx)
    ref = settings.reference
    real, _ = load_real_images(settings)
    count = ref.num_samples or len(real)
    teacher, _ = load_teacher(ctx.device)
    diffusion = make_diffusion(settings, ref.respacing)
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    with start_run(settings, stage="reference", run_name="reference-teacher-samples", method="teacher",
                   tags=md5_tags(None)) as tracker:
        # Written in a work folder first: DVC empties the out before a rerun, which would lose a partial set.
        folder = keyed_work_dir("reference", seed=ref.seed, count=count, teacher=teacher_fingerprint(),
                                diffusion=diffusion.config.to_dict(), batch=ref.batch_size)
        staged = synthesize_dataset(teacher, diffusion, count, folder / SYNTHETIC_FILE.name,
                                    image_shape=image_shape(settings), batch_size=ref.batch_size, device=ctx.device,
                                    seed=ref.seed, clip_denoised=settings.distill.clip_denoised,
                                    progress=ctx.progress_enabled)
        staged.replace(SYNTHETIC_FILE)
        clear_work_dir(folder)
        samples = teacher_sample_images()
        extractor = make_extractor(settings, ctx.device)
        compute_reference_stats(samples, extractor, TEACHER_STATS_FILE, batch_size=settings.features.batch_size,
                                seed=ref.seed, name="teacher", progress=ctx.progress_enabled)
        floor = noise_floor(samples, extractor=extractor, seed=ref.seed, batch_size=settings.features.batch_size)
        metrics = {**floor, "teacher_samples": float(count),
                   "teacher_sampling_steps": float(diffusion.num_timesteps)}
        write_json(REFERENCE_METRICS, metrics)
        tracker.log_metrics(metrics, 0)
        from training.eval.sampling import save_grid

        grid = save_grid(REFERENCE_DIR / "grid.png", samples[: settings.evaluate.grid_size],
                         nrow=8, scale=max(1, 64 // settings.data.image_size))
        tracker.log_artifact(grid, "samples")
    floor_text = ", ".join(f"{k} {v:.3f}" for k, v in floor.items())
    summary(f"reference: {count} teacher samples ({diffusion.num_timesteps} steps), {floor_text} -> {REFERENCE_DIR}")
