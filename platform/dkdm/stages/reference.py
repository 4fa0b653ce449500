"""Stage `reference`: the teacher's own samples D', in either space.

One set serves three purposes, as in the paper: the reference of FD'/FID' (Table 11), the noise floor (FD between
two random halves of it), and the synthetic training set of the data-free / data-limited baselines (Table 4). It is
stored as model inputs (uint8 images, or float16 latents drawn with DDIM, eta 0) and scored as images.
"""
from __future__ import annotations

from dkdm.console import Context, summary
from dkdm.spaces import space_for
from dkdm.stages.common import (
    REFERENCE_DIR,
    REFERENCE_METRICS,
    SYNTHETIC_FILE,
    TEACHER_STATS_FILE,
    clear_work_dir,
    keyed_work_dir,
    load_real_images,
    make_extractor,
    md5_tags,
    teacher_fingerprint,
    write_json,
)
from dkdm.teacher_compat import check_teacher_compat
from dkdm.tracking import start_run


def run(ctx: Context) -> None:
    from training.distill.baselines import load_synthetic
    from training.eval.evaluate import noise_floor
    from training.eval.sampling import save_grid
    from training.eval.stats import compute_reference_stats

    settings = ctx.settings
    check_teacher_compat(settings)  # before anything is written: a teacher of another T refused in one line
    ref = settings.reference
    space = space_for(settings)
    real, _ = load_real_images(settings)
    count = ref.num_samples or len(real)
    teacher, diffusion = space.load_teacher(ctx.device)
    steps = space.sampling_steps(diffusion, ref.respacing, space.synthesis_ddim)
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    with start_run(settings, stage="reference", run_name="reference-teacher-samples", method="teacher",
                   tags={**md5_tags(None), "dkdm.space": space.name}) as tracker:
        # Written in a work folder first: DVC empties the out before a rerun, which would lose a partial set.
        folder = keyed_work_dir("reference", seed=ref.seed, count=count, teacher=teacher_fingerprint(), steps=steps,
                                diffusion=diffusion.config.to_dict(), batch=ref.batch_size)
        staged = space.synthesize(teacher, diffusion, count, folder / SYNTHETIC_FILE.name, steps=ref.respacing,
                                  batch_size=ref.batch_size, seed=ref.seed,
                                  clip_denoised=settings.distill.clip_denoised, device=ctx.device,
                                  progress=ctx.progress_enabled)
        staged.replace(SYNTHETIC_FILE)
        clear_work_dir(folder)
        samples = space.to_images(load_synthetic(SYNTHETIC_FILE), batch_size=ref.batch_size, device=ctx.device)
        extractor = make_extractor(settings, ctx.device)
        compute_reference_stats(samples, extractor, TEACHER_STATS_FILE, batch_size=settings.features.batch_size,
                                seed=ref.seed, name="teacher", progress=ctx.progress_enabled)
        floor = noise_floor(samples, extractor=extractor, seed=ref.seed, batch_size=settings.features.batch_size)
        metrics = {**floor, "teacher_samples": float(count), "teacher_sampling_steps": float(steps)}
        write_json(REFERENCE_METRICS, metrics)
        tracker.log_metrics(metrics, 0)
        grid = save_grid(REFERENCE_DIR / "grid.png", samples[: settings.evaluate.grid_size], nrow=8,
                         scale=max(1, 64 // settings.data.image_size))
        tracker.log_artifact(grid, "samples")
    floor_text = ", ".join(f"{k} {v:.3f}" for k, v in floor.items())
    summary(f"reference: {count} {space.name} teacher samples ({steps} steps), {floor_text} -> {REFERENCE_DIR}")
