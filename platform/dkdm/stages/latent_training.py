"""Latent-space training shared by the teacher and the students, and the `teacher` stage of latent profiles.

The teacher (CPU profiles) is LDM-trained on the real data's latents; the paper profiles import the released
CompVis `model.ckpt` (EMA UNet weights, schedule buffers checked against the profile's). Every latent checkpoint's
sidecar carries its LatentDiffusion (space, T, beta range, scale factor), so later stages need nothing else.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.stages.common import CURVES_DIR, TEACHER_FILE, clear_work_dir, load_real_images, work_dir
from dkdm.stages.latent import (
    ENCODE_BATCH,
    diffusion_config,
    first_stage_images,
    load_first_stage,
    make_latent_diffusion,
    scale_factor,
)
from dkdm.stages.training import LossLog, restore_best_ema, run_key
from dkdm.tracking import start_run


def train_latent(ctx: Context, *, name: str, preset: str, config: Any, source: Any, loss_fn: Any, out_file: Path,
                 tracker: Any, loss_csv: Path, provenance: Mapping[str, Any], diffusion: Mapping[str, Any],
                 extra_key: Mapping[str, Any], eval_fn: Any = None) -> dict[str, Any]:
    """Train `preset` on `source` with `loss_fn`, resumable from `.dkdm/work/<name>-<hash>/`; save EMA + raw
    (with early stopping, the best evaluation's EMA weights)."""
    import torch

    from training.models import create_model, get_preset, save_checkpoint
    from training.train.trainer import Trainer

    torch.manual_seed(config.seed)  # weight initialisation; the sources draw from their own generators
    model = create_model(get_preset(preset))
    folder = work_dir(run_key(name, config, {"preset": preset, "diffusion": dict(diffusion), **extra_key}))
    log = LossLog(tracker, loss_csv)
    trainer = Trainer(model, config, source, loss_fn, device=ctx.device, out_dir=folder, tracker=log,
                      eval_fn=eval_fn, run_meta={"name": name, "preset": preset, "space": "latent"})
    resumed = trainer.resume_if_possible()
    start_step = trainer.step
    started = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - started
    best_step = restore_best_ema(trainer, folder)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_file, trainer.model, model_config=get_preset(preset), diffusion_config=dict(diffusion),
                    provenance={**provenance, "steps": result.step, "best_step": best_step},
                    ema_model=trainer.ema.model)
    log.write()
    done = result.step - start_step
    clear_work_dir(folder)
    return {"steps": result.step, "resumed_from": start_step if resumed else None, "seconds": seconds,
            "train_seconds_per_100_iters": 100.0 * seconds / done if done else None,
            "skipped_steps": result.skipped_steps, "stopped_early": result.stopped_early, "best_step": best_step,
            "final_loss": log.rows[-1]["loss"] if log.rows else None, "source_stats": result.source_stats}


def teacher(ctx: Context, *, iterations: int | None = None) -> None:
    if ctx.settings.teacher.source == "import":
        _import(ctx)
    else:
        _train(ctx, iterations)


def _train(ctx: Context, iterations: int | None) -> None:
    from training.distill.latent import latent_simple_loss_fn
    from training.distill.sources import DatasetSource
    from training.train.first_stage import encode_all
    from training.train.rng import make_generator

    settings = ctx.settings
    cfg = settings.teacher.train
    if iterations is not None:
        cfg = cfg.model_copy(update={"iterations": iterations})
    if cfg.eval_every:
        raise DkdmError("teacher.train.eval_every: periodic evaluation is not offered for latent teachers")
    diffusion_cfg = diffusion_config(settings, scale_factor())
    diffusion = make_latent_diffusion(diffusion_cfg, ctx.device)
    first_stage = load_first_stage(ctx.device)
    images, _ = load_real_images(settings)
    # The first stage is frozen and the data is not augmented, so encoding the set once gives the very latents LDM's
    # per-step encoding would (Table 9 times that per-step cost; the teacher here is only a means to an end).
    latents = encode_all(first_stage, first_stage_images(settings, images), batch_size=ENCODE_BATCH,
                         device=ctx.device) * diffusion.scale_factor
    source = DatasetSource(latents, diffusion.num_timesteps, batch_size=cfg.batch_size, device=ctx.device,
                           generator=make_generator("cpu", cfg.seed, "data"),
                           noise_generator=make_generator(ctx.device, cfg.seed, "noise"))
    preset = settings.teacher.preset
    with start_run(settings, stage="teacher", run_name=f"teacher-{preset}", method="teacher",
                   student=preset) as tracker:
        result = train_latent(
            ctx, name="teacher", preset=preset, config=cfg, source=source, loss_fn=latent_simple_loss_fn(diffusion),
            out_file=TEACHER_FILE, tracker=tracker, loss_csv=CURVES_DIR / "teacher.csv",
            provenance={"source": "train-teacher", "profile": settings.profile, "dataset": settings.data.dataset},
            diffusion=diffusion_cfg, extra_key={"latents": len(latents)},
        )
        if result["train_seconds_per_100_iters"] is not None:
            tracker.log_metrics({"train_seconds_per_100_iters": result["train_seconds_per_100_iters"]},
                                result["steps"])
        tracker.log_artifact(CURVES_DIR / "teacher.csv")
    summary(f"teacher: trained latent {preset} on {len(latents)} latents {tuple(latents.shape[1:])} for "
            f"{result['steps']} steps in {result['seconds']:.0f}s, final loss {result['final_loss']:.4f} -> "
            f"{TEACHER_FILE}")


def _import(ctx: Context) -> None:
    from training.models import get_preset, save_checkpoint
    from training.models.ldm_checkpoint import load_ldm_checkpoint

    settings = ctx.settings
    path, preset = settings.teacher.checkpoint, settings.teacher.preset
    if path is None or not Path(path).is_file():
        raise DkdmError(f"teacher.checkpoint: file {str(path)!r} does not exist (the released LDM model.ckpt)")
    diffusion_cfg = diffusion_config(settings, scale_factor())
    # The checkpoint's schedule buffers must equal the profile's process, or sampling would silently be wrong.
    expected = make_latent_diffusion(diffusion_cfg)
    loaded = load_ldm_checkpoint(path, unet_config=get_preset(preset), ema=True, diffusion=expected)
    TEACHER_FILE.parent.mkdir(parents=True, exist_ok=True)
    with start_run(settings, stage="teacher", run_name=f"import-{preset}", method="teacher", student=preset,
                   tags={"dkdm.teacher": preset}) as tracker:
        save_checkpoint(TEACHER_FILE, loaded.unet, model_config=get_preset(preset), diffusion_config=diffusion_cfg,
                        provenance={"source": "import-ldm", "imported_from": str(path), "ema": loaded.ema_used,
                                    "profile": settings.profile})
        tracker.log_params({"import.source": str(path), "import.preset": preset})
    summary(f"import-teacher: {path} (EMA UNet) as {preset} -> {TEACHER_FILE}")
