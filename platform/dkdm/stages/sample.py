"""`dkdm sample`: N samples from any dkdm checkpoint, as an ADM-evaluator .npz and a PNG grid.

The checkpoint's sidecar says its space. A latent-space checkpoint is sampled in latent space and decoded with the
active profile's first stage (`dkdm autoencoder` writes it), at the profile's image size, as evaluations do.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.spaces import checkpoint_space, space_for
from dkdm.stages.ranks import job_of
from dkdm.teacher_compat import check_if_teacher
from training.train.distributed import DistContext


def run(ctx: Context, *, checkpoint: Path, num: int, steps: str, ddim: bool, eta: float, batch_size: int,
        seed: int, ema: bool, out: Path, grid: Path | None, dist: DistContext | None = None) -> None:
    """Under a job of W processes the ranks share the batches (the same images as one process); rank 0 writes."""
    from training.eval.sampling import save_grid, save_samples_npz

    if not checkpoint.is_file():
        raise DkdmError(f"checkpoint: file {checkpoint} does not exist")
    if out.suffix != ".npz":
        raise DkdmError(f"--out: {out} must end in .npz")
    check_if_teacher(ctx.settings, checkpoint)
    space = space_for(ctx.settings, checkpoint_space(checkpoint))
    job = job_of(ctx, dist)
    model, process, _ = space.load_model(checkpoint, job.device, ema=ema)
    count = space.sampling_steps(process, steps, ddim)
    # A latent checkpoint needs the profile's first stage (one line naming `dkdm autoencoder` when there is none).
    decoded = space.first_stage(job.device) is not None
    with torch.no_grad():
        images = space.sample(model, process, num, steps=steps, use_ddim=ddim, eta=eta, clip_denoised=True,
                              batch_size=batch_size, seed=seed, device=job.device, progress=ctx.progress_enabled,
                              dist=job)
    if images is None:  # ranks other than 0: rank 0 holds every image
        return
    label = f"{count} DDIM steps (eta {eta})" if ddim else f"{count} ancestral steps"
    label += ", decoded" if decoded else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_samples_npz(out, images)
    grid = grid or out.with_suffix(".png")
    save_grid(grid, images[:64], nrow=8, scale=max(1, 64 // images.shape[1]))
    processes = f", {job.world_size} processes" if job.enabled else ""
    summary(f"sample: {num} images, {label}, seed {seed}{processes} -> {out} (grid {grid}) in {ctx.elapsed():.1f}s")
