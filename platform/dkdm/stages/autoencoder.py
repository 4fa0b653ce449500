"""Stage `autoencoder`: the first stage of a latent profile, trained on the real data or imported.

Pixel profiles have none: dvc.yaml runs this stage only for latent profiles (`first_stage@autoencoder`, a foreach
over pipeline.first_stage) and by hand it refuses a pixel profile in one line. The result is
outputs/autoencoder/first_stage.safetensors (+ .json sidecar) and info.json with the scale factor the latent process
uses ('auto' is resolved here, once, as LDM's 1/std of the encoded training set), the latent shape and the
reconstruction error on the training set at the data's size.
"""
from __future__ import annotations

from pathlib import Path

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.spaces.latent import ENCODE_BATCH, decode_to_images, first_stage_images, latent_shape
from dkdm.stages.common import (
    AUTOENCODER_DIR,
    AUTOENCODER_INFO,
    DATA_FILE,
    FIRST_STAGE_FILE,
    load_real_images,
    require,
    write_json,
)
from dkdm.stages.training import LossLog
from dkdm.tracking import start_run


def run(ctx: Context) -> None:
    settings = ctx.settings
    if settings.space != "latent":  # dvc.yaml has no such stage for pixel profiles (pipeline.first_stage: [])
        raise DkdmError(f"autoencoder: profile {settings.profile!r} works in pixel space and has no first stage "
                        "to train or import (set `space: latent` and teacher.latent for a latent profile)")
    AUTOENCODER_DIR.mkdir(parents=True, exist_ok=True)
    if settings.teacher.latent.first_stage.source == "import":
        _import(ctx)
    else:
        _train(ctx)


def _import(ctx: Context) -> None:
    from training.models import get_preset, save_checkpoint
    from training.models.ldm_checkpoint import load_first_stage_checkpoint

    settings = ctx.settings
    fs = settings.teacher.latent.first_stage
    path = fs.checkpoint or settings.teacher.checkpoint
    if path is None or not Path(path).is_file():
        raise DkdmError(f"teacher.latent.first_stage.checkpoint: file {str(path)!r} does not exist (the released "
                        "LDM model.ckpt holds the first stage under first_stage_model.*)")
    model = load_first_stage_checkpoint(path, get_preset(fs.preset))
    with start_run(settings, stage="teacher", run_name=f"autoencoder-import-{fs.preset}", method="teacher",
                   student=fs.preset, tags={"dkdm.component": "first_stage"}) as tracker:
        save_checkpoint(FIRST_STAGE_FILE, model, model_config=get_preset(fs.preset), diffusion_config={},
                        provenance={"source": "import-first-stage", "imported_from": str(path),
                                    "profile": settings.profile})
        info = _finish(ctx, model, {"source": "import", "checkpoint": str(path)})
        tracker.log_metrics({k: v for k, v in info.items() if k in ("scale_factor", "recon_mse")}, 0)
    summary(f"autoencoder: imported {fs.preset} from {path}, scale factor {info['scale_factor']:.4g} -> "
            f"{FIRST_STAGE_FILE}")


def _train(ctx: Context) -> None:
    import torch

    from training.models import create_model, get_preset, save_checkpoint
    from training.train.first_stage import FirstStageTrainConfig, train_first_stage

    settings = ctx.settings
    fs = settings.teacher.latent.first_stage
    require(DATA_FILE, "dkdm data")
    images, _ = load_real_images(settings)
    x = first_stage_images(settings, images)
    config = FirstStageTrainConfig(**fs.train.model_dump())
    torch.manual_seed(fs.train.seed)  # weight initialisation; every draw in training has its own generator
    model = create_model(get_preset(fs.preset))
    with start_run(settings, stage="teacher", run_name=f"autoencoder-{fs.preset}", method="teacher",
                   student=fs.preset, tags={"dkdm.component": "first_stage"}) as tracker:
        log = LossLog(tracker, AUTOENCODER_DIR / "train_log.csv")
        result = train_first_stage(model, x, config, device=ctx.device, tracker=log)
        save_checkpoint(FIRST_STAGE_FILE, model, model_config=get_preset(fs.preset), diffusion_config={},
                        provenance={"source": "train-first-stage", "profile": settings.profile,
                                    "dataset": settings.data.dataset, "steps": result.steps})
        log.write()
        info = _finish(ctx, model, {"source": "train", "steps": result.steps, "codes_used": result.codes_used,
                                    "restarted_codes": result.restarted_codes, "final_loss": result.final_loss})
        tracker.log_metrics({k: float(v) for k, v in info.items()
                             if k in ("scale_factor", "recon_mse", "recon_psnr", "codes_used")}, result.steps)
        tracker.log_artifact(AUTOENCODER_DIR / "train_log.csv")
    summary(f"autoencoder: trained {fs.preset} for {result.steps} steps ({result.codes_used} codes used), "
            f"reconstruction PSNR {info['recon_psnr']:.1f} dB at {settings.data.image_size}px, scale factor "
            f"{info['scale_factor']:.4g} in {ctx.elapsed():.0f}s -> {FIRST_STAGE_FILE}")


def _finish(ctx: Context, model, extra: dict) -> dict:
    """Resolve the scale factor and measure the round trip image -> latent -> image on (up to 2,048) training images."""
    import math

    import numpy as np

    from training.diffusion.ldm import LatentDiffusion
    from training.train.first_stage import encode_all, scale_by_std

    settings = ctx.settings
    latent = settings.teacher.latent
    images, _ = load_real_images(settings)
    images = images[:2048]
    batch = ENCODE_BATCH
    z = encode_all(model, first_stage_images(settings, images), batch_size=batch, device=ctx.device)
    scale = scale_by_std(z) if latent.scale_factor == "auto" else float(latent.scale_factor)
    diffusion = LatentDiffusion(settings.diffusion.steps, latent.linear_start, latent.linear_end, scale)
    recon = decode_to_images(model, diffusion, z * scale, image_size=settings.data.image_size, batch_size=batch,
                             device=ctx.device)
    mse = float(np.mean((recon.astype(np.float64) - images.astype(np.float64)) ** 2))
    info = {"space": "latent", "first_stage": settings.teacher.latent.first_stage.preset, "scale_factor": scale,
            "scale_factor_setting": latent.scale_factor, "latent_shape": list(latent_shape(settings)),
            "latent_std": float(z.std()), "recon_mse": mse,
            "recon_psnr": 10 * math.log10(255.0 ** 2 / mse) if mse > 0 else float("inf"),
            "recon_images": int(len(images)), **extra}
    write_json(AUTOENCODER_INFO, info)
    return info
