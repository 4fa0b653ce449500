"""Training a VQ first stage (the CPU latent profiles; the paper's autoencoders are imported, never trained here).

LDM trains its autoencoders with L1 + LPIPS + a patch GAN; at digits scale L1 plus the codebook loss is enough to
give the diffusion a faithful latent space. Short runs suffer from dead codes (the codebook starts near zero, far from
the encoder's outputs), so unused codes are re-seeded from current encoder outputs at step 0 and every
`codebook_restart_every` steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from training.models.vq import VQModel
from training.train.tracker import NullTracker, Tracker


@dataclass(frozen=True)
class FirstStageTrainConfig:
    iterations: int
    batch_size: int
    lr: float
    seed: int = 0
    log_every: int = 50
    codebook_restart_every: int | None = 100


@dataclass(frozen=True)
class FirstStageResult:
    steps: int
    final_loss: float
    final_l1: float
    codes_used: int
    restarted_codes: int


def _restart_unused(model: VQModel, z: Tensor, used: Tensor, generator: torch.Generator) -> int:
    """Move every code no batch picked since the last restart onto a random current encoder output."""
    dead = (~used).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    picks = torch.randint(0, z_flat.shape[0], (dead.numel(),), generator=generator).to(z_flat.device)
    with torch.no_grad():
        model.quantize.embedding.weight[dead] = z_flat[picks]
    return int(dead.numel())


def train_first_stage(model: VQModel, images: Tensor, config: FirstStageTrainConfig, *, device: torch.device | str,
                      tracker: Tracker | None = None) -> FirstStageResult:
    """Train `model` in place on `images` (N, C, R, R) float in [-1, 1] at the model's resolution.

    Logs `train/loss`, `train/mse` (pixel MSE of the reconstruction), `train/l1`, `train/codebook` and
    `train/codes_used` every `log_every` steps.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"first stage: images must be a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    dev = torch.device(device)
    tracker = tracker or NullTracker()
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    data_gen = torch.Generator().manual_seed(config.seed)
    restart_gen = torch.Generator().manual_seed(config.seed + 1)
    n_embed = model.quantize.n_embed
    used = torch.zeros(n_embed, dtype=torch.bool, device=dev)
    restarted = 0
    window = torch.zeros(4, dtype=torch.float64)
    count = 0
    loss = l1 = torch.zeros(())
    for step in range(config.iterations):
        batch = images[torch.randint(0, images.shape[0], (config.batch_size,), generator=data_gen)].to(dev)
        z = model.encode(batch)
        every = config.codebook_restart_every
        if every is not None and step % every == 0:
            restarted += _restart_unused(model, z, used if step else torch.zeros_like(used), restart_gen)
            used.zero_()
        quant, codebook_loss, indices = model.quantize(z)
        recon = model.decoder(model.post_quant_conv(quant))
        l1 = (recon - batch).abs().mean()
        loss = l1 + codebook_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        used[indices.flatten().unique()] = True
        window += torch.tensor([float(loss.detach()), float(F.mse_loss(recon.detach(), batch)), float(l1.detach()),
                                float(codebook_loss.detach())], dtype=torch.float64)
        count += 1
        if (step + 1) % config.log_every == 0 or step + 1 == config.iterations:
            mean = (window / count).tolist()
            tracker.log_metrics({"train/loss": mean[0], "train/mse": mean[1], "train/l1": mean[2],
                                 "train/codebook": mean[3], "train/codes_used": float(used.sum())}, step + 1)
            window.zero_()
            count = 0
    model.eval()
    return FirstStageResult(config.iterations, float(loss.detach()), float(l1.detach()), int(used.sum()), restarted)


@torch.no_grad()
def encode_all(model: VQModel, images: Tensor, *, batch_size: int, device: torch.device | str) -> Tensor:
    """Unquantised encoder outputs (float32, CPU) of a whole image set; the caller applies the scale factor."""
    dev = torch.device(device)
    return torch.cat([model.encode(images[i:i + batch_size].to(dev)).float().cpu()
                      for i in range(0, images.shape[0], batch_size)])


def scale_by_std(latents: Tensor) -> float:
    """LDM's `scale_by_std`: 1 / std of the latents, so the diffusion sees unit-variance data."""
    std = float(latents.float().flatten().std())
    if not std > 0:
        raise ValueError("first stage: the encoded set has zero variance; the autoencoder did not train")
    return 1.0 / std
