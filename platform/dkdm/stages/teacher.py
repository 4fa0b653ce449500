"""Stage `teacher`: train the teacher on the real data (CPU profiles) or import a foreign .pt (paper profiles)."""
from __future__ import annotations

from pathlib import Path

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.stages.common import (
    CURVES_DIR,
    DATA_FILE,
    TEACHER_FILE,
    diffusion_dict,
    load_real_images,
    nhwc_to_model,
    require,
    write_csv,
)
from dkdm.stages.training import train_network
from dkdm.tracking import start_run


def run(ctx: Context) -> None:
    if ctx.settings.space == "latent":
        from dkdm.stages.latent_training import teacher as latent_teacher

        return latent_teacher(ctx)
    if ctx.settings.teacher.source == "import":
        import_(ctx)
        # An imported teacher has no training curve, but dvc.yaml declares the plot file: it exists, empty.
        write_csv(CURVES_DIR / "teacher.csv", ("step", "loss"), [])
    else:
        train(ctx)


def train(ctx: Context, *, iterations: int | None = None) -> None:
    from training.distill.config import DistillConfig

    if ctx.settings.space == "latent":
        from dkdm.stages.latent_training import teacher as latent_teacher

        return latent_teacher(ctx, iterations=iterations)
    settings = ctx.settings
    teacher = settings.teacher
    train_cfg = teacher.train if iterations is None else teacher.train.model_copy(update={"iterations": iterations})
    config = DistillConfig(**train_cfg.model_dump(), method="data_based")
    require(DATA_FILE, "dkdm data")
    images, _ = load_real_images(settings)
    with start_run(settings, stage="teacher", run_name=f"teacher-{teacher.preset}", method="teacher",
                   student=teacher.preset) as tracker:
        result = train_network(
            ctx, name="teacher", preset=teacher.preset, config=config, out_file=TEACHER_FILE, tracker=tracker,
            loss_csv=CURVES_DIR / "teacher.csv", real_images=nhwc_to_model(images),
            provenance={"source": "train-teacher", "profile": settings.profile, "dataset": settings.data.dataset},
        )
        tracker.log_metrics({k: v for k, v in result.items() if k in ("train_seconds_per_100_iters",)
                             and v is not None}, result["steps"])
        tracker.log_artifact(CURVES_DIR / "teacher.csv")
    summary(f"teacher: trained {teacher.preset} for {result['steps']} steps in {result['seconds']:.0f}s, final loss "
            f"{result['final_loss']:.4f} -> {TEACHER_FILE}")


def import_(ctx: Context, *, checkpoint: Path | None = None, preset: str | None = None, out: Path | None = None) -> None:
    from training.models import import_teacher, read_checkpoint_meta

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
    from dkdm.compat import check_preset

    try:
        check_preset("--preset", preset)
    except ValueError as err:
        raise DkdmError(str(err)) from None
    if out.suffix != ".safetensors":
        raise DkdmError(f"--out: {out} must end in .safetensors (a .json sidecar is written beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with start_run(settings, stage="teacher", run_name=f"import-{preset}", method="teacher", student=preset,
                   tags={"dkdm.teacher": preset}) as tracker:
        path = import_teacher(checkpoint, preset, out, diffusion_config=diffusion_dict(settings))
        meta = read_checkpoint_meta(path)
        tracker.log_params({"import.source": str(checkpoint), "import.preset": preset})
        tracker.set_tags({"dkdm.import.sha256": meta.get("provenance", {}).get("imported_sha256", "")})
    summary(f"import-teacher: {checkpoint} as {preset} -> {path}")

