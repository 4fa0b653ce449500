"""`dkdm sample`: N samples from any dkdm checkpoint, as an ADM-evaluator .npz and a PNG grid."""
from __future__ import annotations

from pathlib import Path

from dkdm.console import Context, summary
from dkdm.errors import DkdmError


def run(ctx: Context, *, checkpoint: Path, num: int, steps: str, ddim: bool, eta: float, batch_size: int,
        seed: int, ema: bool, out: Path, grid: Path | None) -> None:
    from training.eval.sampling import generate_samples, load_sampler, save_grid, save_samples_npz

    if not checkpoint.is_file():
        raise DkdmError(f"checkpoint: file {checkpoint} does not exist")
    if out.suffix != ".npz":
        raise DkdmError(f"--out: {out} must end in .npz")
    respacing = f"ddim{steps}" if ddim and steps.isdigit() else steps
    model, diffusion = load_sampler(checkpoint, respacing=respacing, ema=ema, device=ctx.device)
    images = generate_samples(model, diffusion, num, batch_size=batch_size, seed=seed, device=ctx.device,
                              use_ddim=ddim, eta=eta, progress=ctx.progress_enabled)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_samples_npz(out, images)
    grid = grid or out.with_suffix(".png")
    save_grid(grid, images[:64], nrow=8, scale=max(1, 64 // images.shape[1]))
    summary(f"sample: {num} images, {diffusion.num_timesteps} {'DDIM' if ddim else 'ancestral'} steps, seed {seed} "
            f"-> {out} (grid {grid}) in {ctx.elapsed():.1f}s")
