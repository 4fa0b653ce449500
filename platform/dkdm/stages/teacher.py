"""Stage `teacher`: train the teacher on the real data (CPU profiles) or import a released checkpoint (paper
profiles: a foreign .pt in pixel space, the CompVis LDM `model.ckpt` in latent space)."""
from __future__ import annotations

from pathlib import Path

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.spaces import space_for
from dkdm.stages.common import CURVES_DIR, TEACHER_FILE, load_real_images, write_csv
from dkdm.stages.ranks import main_run
from dkdm.stages.training import report_weights, resume_state_file, train_network
from dkdm.tracking import start_run
from training.train.distributed import DistContext


def run(ctx: Context, *, dist: DistContext | None = None) -> None:
    if ctx.settings.teacher.source == "import":
        if dist is None or dist.is_main:  # a conversion: one process does it, the others have nothing to do
            import_(ctx)
            # An imported teacher has no training curve, but dvc.yaml declares the plot file: it exists, empty.
            write_csv(CURVES_DIR / "teacher.csv", ("step", "loss"), [])
    else:
        train(ctx, dist=dist)


def train(ctx: Context, *, iterations: int | None = None, dist: DistContext | None = None) -> None:
    """Ordinary diffusion training on the real data (data_based). A latent teacher trains on the set encoded once:
    the first stage is frozen and the data not augmented, so that gives the very latents LDM's per-step encoding
    would (Table 9 times that per-step cost; the teacher here is only a means to an end)."""
    from training.distill.config import DistillConfig

    settings = ctx.settings
    teacher = settings.teacher
    space = space_for(settings)
    train_cfg = teacher.train if iterations is None else teacher.train.model_copy(update={"iterations": iterations})
    config = DistillConfig(**train_cfg.model_dump(), method="data_based")
    images, _ = load_real_images(settings)
    inputs = space.encode_all(images, ctx.device)
    with main_run(settings, dist, stage="teacher", run_name=f"teacher-{teacher.preset}", method="teacher",
                 student=teacher.preset, resume_state=resume_state_file(settings, "teacher", teacher.preset,
                                                                        config)) as tracker:
        result = train_network(
            ctx, space, name="teacher", preset=teacher.preset, config=config, out_file=TEACHER_FILE, tracker=tracker,
            loss_csv=CURVES_DIR / "teacher.csv", real_images=inputs, dist=dist,
            provenance={"source": "train-teacher", "profile": settings.profile, "dataset": settings.data.dataset},
        )
        report_weights(tracker, dist, result["weights_sha256"])
        if dist is not None and not dist.is_main:
            return
        if result["train_seconds_per_100_iters"] is not None:
            tracker.log_metrics({"train_seconds_per_100_iters": result["train_seconds_per_100_iters"]},
                                result["steps"])
        tracker.log_artifact(CURVES_DIR / "teacher.csv")
    summary(f"teacher: trained {space.name} {teacher.preset} on {len(inputs)} model inputs "
            f"{tuple(inputs.shape[1:])} for {result['steps']} steps in {result['seconds']:.0f}s, final loss "
            f"{result['final_loss']:.4f} -> {TEACHER_FILE}")


def import_(ctx: Context, *, checkpoint: Path | None = None, preset: str | None = None,
            out: Path | None = None) -> None:
    from dkdm.compat import check_preset

    settings = ctx.settings
    checkpoint = checkpoint or settings.teacher.checkpoint
    preset = preset or settings.teacher.preset
    out = out or TEACHER_FILE
    if checkpoint is None:
        raise DkdmError("teacher.checkpoint: give the .pt to import (argument or teacher.checkpoint)")
    from training.models.diffusers_io import is_diffusers_path

    if is_diffusers_path(checkpoint):
        from dkdm.diffusers_glue import import_diffusers

        import_diffusers(ctx, Path(checkpoint), out)
        return
    if not Path(checkpoint).is_file():
        raise DkdmError(f"teacher.checkpoint: file {str(checkpoint)!r} does not exist")
    try:
        check_preset("--preset", preset)
    except ValueError as err:
        raise DkdmError(str(err)) from None
    if out.suffix != ".safetensors":
        raise DkdmError(f"--out: {out} must end in .safetensors (a .json sidecar is written beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with start_run(settings, stage="teacher", run_name=f"import-{preset}", method="teacher", student=preset,
                   tags={"dkdm.teacher": preset}) as tracker:
        tags = space_for(settings).import_teacher(Path(checkpoint), preset, out)
        tracker.log_params({"import.source": str(checkpoint), "import.preset": preset})
        if tags:
            tracker.set_tags(tags)
    summary(f"import-teacher: {checkpoint} as {preset} -> {out}")
