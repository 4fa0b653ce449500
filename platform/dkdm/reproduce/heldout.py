"""The held-out half of D': a second, independent set of teacher samples that only scores FD'.

The platform's reference stage draws one set D' that is both the data-free baseline's training set and the FD'
reference, so a data-free student would be scored against its own training data. The reproduction keeps that set
for training and scores FD' against this one: same teacher, sampler and size, another seed (both recorded in
info.json), so the two sets share no sample.
"""
from __future__ import annotations

from pathlib import Path

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.spaces import space_for
from dkdm.stages.common import (
    clear_work_dir,
    keyed_work_dir,
    load_real_images,
    make_extractor,
    teacher_fingerprint,
    write_json,
)

HELDOUT_DIR = Path("outputs") / "heldout"
HELDOUT_SAMPLES = HELDOUT_DIR / "teacher_samples.safetensors"
HELDOUT_STATS = HELDOUT_DIR / "teacher_stats.safetensors"
HELDOUT_INFO = HELDOUT_DIR / "info.json"


def run_heldout(ctx: Context, seed: int) -> dict[str, float | int]:
    """Draw the scoring reference (as many samples as D', the same steps) with `seed` and store its statistics."""
    from training.distill.baselines import load_synthetic
    from training.eval.stats import compute_reference_stats

    settings = ctx.settings
    ref = settings.reference
    if seed == ref.seed:
        raise DkdmError(f"experiment.heldout_seed: {seed} is reference.seed; the FD' reference must be drawn with "
                        "another seed than the data-free training set")
    space = space_for(settings)
    count = ref.num_samples or len(load_real_images(settings)[0])
    teacher, diffusion = space.load_teacher(ctx.device)
    steps = space.sampling_steps(diffusion, ref.respacing, space.synthesis_ddim)
    HELDOUT_DIR.mkdir(parents=True, exist_ok=True)
    folder = keyed_work_dir("heldout", seed=seed, count=count, teacher=teacher_fingerprint(), steps=steps,
                            diffusion=diffusion.config.to_dict(), batch=ref.batch_size)
    staged = space.synthesize(teacher, diffusion, count, folder / HELDOUT_SAMPLES.name, steps=ref.respacing,
                              batch_size=ref.batch_size, seed=seed, clip_denoised=settings.distill.clip_denoised,
                              device=ctx.device, progress=ctx.progress_enabled)
    staged.replace(HELDOUT_SAMPLES)
    clear_work_dir(folder)
    samples = space.to_images(load_synthetic(HELDOUT_SAMPLES), batch_size=ref.batch_size, device=ctx.device)
    compute_reference_stats(samples, make_extractor(settings, ctx.device), HELDOUT_STATS,
                            batch_size=settings.features.batch_size, seed=seed, name="teacher-heldout",
                            progress=ctx.progress_enabled)
    info = {"num_samples": count, "sampling_steps": steps, "seed": seed, "training_set_seed": ref.seed}
    write_json(HELDOUT_INFO, info)
    summary(f"heldout: {count} teacher samples (seed {seed}; the data-free set D' has seed {ref.seed}), "
            f"{steps} steps -> {HELDOUT_DIR}")
    return info
