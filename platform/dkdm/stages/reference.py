"""Stage `reference`: the teacher's own samples D', in either space.

D' is the synthetic training set of the data-free / data-limited baselines (Table 4) and gives the noise floor (FD
between two random halves of it). It is stored as model inputs (uint8 images, or float16 latents drawn with DDIM,
eta 0) and scored as images. The reference statistics of FD'/FID' (Table 11) come from D' too, as in the paper, unless
`reference.heldout_seed` asks for a second set of the same size: then the baselines trained on D' are not scored
against their own training data. Only that set's statistics are kept.
"""
from __future__ import annotations

from pathlib import Path

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
from dkdm.stages.ranks import job_of, main_run
from dkdm.teacher_compat import check_teacher_compat
from training.train.distributed import DistContext


def run(ctx: Context, *, dist: DistContext | None = None) -> None:
    """Under a job of W processes the ranks share D''s batches (the same set as one process draws); rank 0
    writes it, scores it and records the run."""
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
    job = job_of(ctx, dist)
    device = job.device
    teacher, diffusion = space.load_teacher(device)
    steps = space.sampling_steps(diffusion, ref.respacing, space.synthesis_ddim)
    with main_run(ctx.settings, job, stage="reference", run_name="reference-teacher-samples", method="teacher",
                  tags={**md5_tags(None), "dkdm.space": space.name}) as tracker:
        def draw(name: str, seed: int) -> tuple[Path, Path]:
            folder = keyed_work_dir(name, seed=seed, count=count, teacher=teacher_fingerprint(), steps=steps,
                                    diffusion=diffusion.config.to_dict(), batch=ref.batch_size)
            return folder, space.synthesize(teacher, diffusion, count, folder / SYNTHETIC_FILE.name,
                                            steps=ref.respacing, batch_size=ref.batch_size, seed=seed,
                                            clip_denoised=settings.distill.clip_denoised, device=device,
                                            progress=ctx.progress_enabled, dist=job)

        # Written in work folders first: DVC empties the out before a rerun, which would lose a partial set.
        folder, staged = draw("reference", ref.seed)
        heldout = draw("reference-heldout", ref.heldout_seed) if ref.heldout_seed is not None else None
        if not job.is_main:
            return
        REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
        staged.replace(SYNTHETIC_FILE)
        clear_work_dir(folder)
        samples = space.to_images(load_synthetic(SYNTHETIC_FILE), batch_size=ref.batch_size, device=device)
        extractor = make_extractor(settings, device)
        scored = samples
        if heldout is not None:
            scored = space.to_images(load_synthetic(heldout[1]), batch_size=ref.batch_size, device=device)
        compute_reference_stats(scored, extractor, TEACHER_STATS_FILE, batch_size=settings.features.batch_size,
                                seed=ref.seed, name="teacher", progress=ctx.progress_enabled)
        if heldout is not None:
            clear_work_dir(heldout[0])
        floor = noise_floor(samples, extractor=extractor, seed=ref.seed, batch_size=settings.features.batch_size)
        metrics = {**floor, "teacher_samples": float(count), "teacher_sampling_steps": float(steps)}
        if ref.heldout_seed is not None:
            metrics |= {"heldout_samples": float(count), "heldout_seed": float(ref.heldout_seed)}
        write_json(REFERENCE_METRICS, metrics)
        tracker.log_metrics(metrics, 0)
        grid = save_grid(REFERENCE_DIR / "grid.png", samples[: settings.evaluate.grid_size], nrow=8,
                         scale=max(1, 64 // settings.data.image_size))
        tracker.log_artifact(grid, "samples")
    floor_text = ", ".join(f"{k} {v:.3f}" for k, v in floor.items())
    against = f"; FD' against {count} held-out samples (seed {ref.heldout_seed})" if heldout is not None else ""
    summary(f"reference: {count} {space.name} teacher samples ({steps} steps, {job.world_size} process(es)), "
            f"{floor_text}{against} -> {REFERENCE_DIR}")
