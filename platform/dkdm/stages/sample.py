"""`dkdm sample`: N samples from any dkdm checkpoint, as an ADM-evaluator .npz and a PNG grid.

A latent-space checkpoint (its sidecar's diffusion is `space: latent`) is sampled in latent space and decoded with
the active profile's first stage (`dkdm autoencoder` writes it), at the profile's image size, as evaluations do.
"""
from __future__ import annotations

from pathlib import Path

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.teacher_compat import check_if_teacher


def _is_latent(checkpoint: Path) -> bool:
    from training.models.checkpoint import CheckpointError, read_checkpoint_meta

    try:
        meta = read_checkpoint_meta(checkpoint)
    except CheckpointError as err:
        raise DkdmError(f"checkpoint: {err}") from None
    return meta["diffusion_config"].get("space") == "latent"


def _latent_samples(ctx: Context, checkpoint: Path, *, num: int, steps: str, ddim: bool, eta: float,
                    batch_size: int, seed: int, ema: bool):
    import torch

    from dkdm.stages.latent import decode_to_images, load_first_stage, load_latent_model, sample_latents

    count = steps.removeprefix("ddim")
    if ddim and not count.isdigit():
        raise DkdmError(f"--steps: {steps!r} is not a step count; a latent checkpoint takes DDIM steps like '50'")
    model, diffusion, meta = load_latent_model(checkpoint, ctx.device, ema=ema)
    config = meta.model_config
    shape = (int(config.in_channels), int(config.image_size), int(config.image_size))
    first_stage = load_first_stage(ctx.device)  # one line naming `dkdm autoencoder` when the profile has none
    with torch.no_grad():
        z = sample_latents(model, diffusion, num, shape=shape, steps=count, use_ddim=ddim, eta=eta,
                           batch_size=batch_size, seed=seed, device=ctx.device)
        images = decode_to_images(first_stage, diffusion, z, image_size=ctx.settings.data.image_size,
                                  batch_size=batch_size, device=ctx.device)
    label = f"{count} DDIM steps (eta {eta})" if ddim else f"{diffusion.num_timesteps} ancestral latent steps"
    return images, label + ", decoded"


def run(ctx: Context, *, checkpoint: Path, num: int, steps: str, ddim: bool, eta: float, batch_size: int,
        seed: int, ema: bool, out: Path, grid: Path | None) -> None:
    from training.eval.sampling import generate_samples, load_sampler, save_grid, save_samples_npz

    if not checkpoint.is_file():
        raise DkdmError(f"checkpoint: file {checkpoint} does not exist")
    if out.suffix != ".npz":
        raise DkdmError(f"--out: {out} must end in .npz")
    check_if_teacher(ctx.settings, checkpoint)
    if _is_latent(checkpoint):
        images, label = _latent_samples(ctx, checkpoint, num=num, steps=steps, ddim=ddim, eta=eta,
                                        batch_size=batch_size, seed=seed, ema=ema)
    else:
        respacing = f"ddim{steps}" if ddim and steps.isdigit() else steps
        model, diffusion = load_sampler(checkpoint, respacing=respacing, ema=ema, device=ctx.device)
        images = generate_samples(model, diffusion, num, batch_size=batch_size, seed=seed, device=ctx.device,
                                  use_ddim=ddim, eta=eta, progress=ctx.progress_enabled)
        label = f"{diffusion.num_timesteps} {'DDIM' if ddim else 'ancestral'} steps"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_samples_npz(out, images)
    grid = grid or out.with_suffix(".png")
    save_grid(grid, images[:64], nrow=8, scale=max(1, 64 // images.shape[1]))
    summary(f"sample: {num} images, {label}, seed {seed} -> {out} (grid {grid}) in {ctx.elapsed():.1f}s")
