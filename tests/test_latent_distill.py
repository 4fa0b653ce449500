"""Latent DKDM glue on the engine: teacher step and loss against the golden numbers, the latent pool, the
baselines' sources, and that distillation never runs the encoder."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.diffusion.ldm import LatentDiffusion
from training.distill.config import DistillConfig
from training.distill.latent import (
    EncodingSource,
    LatentTeacherStep,
    build_latent_pool,
    latent_dkdm_loss_fn,
    latent_source_and_loss,
    pool_nbytes,
    synthesize_latents,
)
from training.distill.sources import TeacherBatch
from training.models.latent_presets import get_latent_preset
from training.models.ldm_unet import LDMUNet
from training.models.vq import VQModel
from training.train.trainer import Trainer

TINY_UNET = {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32,
             "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 1], "num_head_channels": 16}
LATENT = (3, 8, 8)


def _tiny(seed: int) -> LDMUNet:
    torch.manual_seed(seed)  # only the initial weights of this throw-away network
    model = LDMUNet.from_config(TINY_UNET)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture()
def short_diffusion() -> LatentDiffusion:
    return LatentDiffusion(timesteps=20)


class _Counter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


def test_teacher_step_and_loss_match_golden(shared_dir: Path) -> None:
    gold = shared_dir / "reference" / "latent" / "golden"
    ref = np.load(gold / "ldm_diffusion.npz")
    cfg = json.loads((gold / "ldm_unet_small" / "config.json").read_text())["config"]
    teacher, student = LDMUNet.from_config(cfg).eval(), LDMUNet.from_config(cfg).eval()
    teacher.load_state_dict(load_file(gold / "ldm_unet_small" / "weights.safetensors"))
    student.load_state_dict(load_file(gold / "ldm_unet_small" / "weights_student.safetensors"))
    step = LatentTeacherStep(teacher, LatentDiffusion(), batch_size=1)  # chunked on purpose
    x_t, t = torch.from_numpy(ref["dkdm_z_t"]), torch.from_numpy(ref["dkdm_t"])
    out, x_prev = step(x_t, t, torch.from_numpy(ref["dkdm_noise"]))
    # Tolerances as in test_latent_golden: 1e-4 * max(1, |ref|) for the pool entry, 1e-5 abs for eps,
    # 1e-5 relative for the loss.
    assert np.abs(x_prev.numpy() - ref["dkdm_x_prev"]).max() <= 1e-4 * max(1.0, np.abs(ref["dkdm_x_prev"]).max())
    assert np.abs(out["model_output"].numpy() - ref["dkdm_teacher_out"]).max() <= 1e-5
    with torch.no_grad():
        losses = latent_dkdm_loss_fn()(student, TeacherBatch(x_t, t, out, x_prev))
    assert float(losses["loss"].mean()) == pytest.approx(float(ref["dkdm_loss"]), rel=1e-5)
    assert torch.equal(losses["vb"], torch.zeros(2)), "latent DKDM has no vb term"


def test_pool_size_dtype_and_logged_memory(short_diffusion: LatentDiffusion, caplog) -> None:
    step = LatentTeacherStep(_tiny(0), short_diffusion)
    with caplog.at_level(logging.INFO, logger="training.distill.latent"):
        pool = build_latent_pool(step, rho=0.2, batch_size=3, latent_shape=LATENT, pool_dtype="float16",
                                 teacher_batch_size=5, device="cpu", generator=torch.Generator().manual_seed(0))
    assert len(pool) == round(0.2 * 20) * 3 == 12
    assert pool.x.dtype == torch.float16
    assert pool.meta["nbytes"] == pool_nbytes(12, LATENT, torch.float16) == 12 * (3 * 8 * 8 * 2 + 8)
    assert f"= {pool.meta['nbytes']} bytes" in caplog.text
    assert int(pool.s.min()) >= 1 and int(pool.s.max()) <= 19, "prepared entries stop at a random 1..T-1"
    # Paper scale: rho 4, b 48, 3x64x64 float32 latents -> 192,000 entries, ~9.4 GB (METHOD §10: ~8-10 GB).
    assert pool_nbytes(4 * 1000 * 48, (3, 64, 64), torch.float32) == 192_000 * (3 * 64 * 64 * 4 + 8)


def test_dynamic_distillation_trains_without_the_encoder(short_diffusion: LatentDiffusion) -> None:
    vq = VQModel.from_config(get_latent_preset("vq-f4-small")).eval()
    encoder_calls, decoder_calls = _Counter(vq.encoder), _Counter(vq.decoder)
    config = DistillConfig(method="dynamic", iterations=3, batch_size=2, rho=0.1, teacher_batch_size=4,
                           clip_denoised=False, log_every=1, eval_every=3, lr=1e-3)
    source, loss_fn = latent_source_and_loss(config, teacher=_tiny(0), diffusion=short_diffusion,
                                             latent_shape=LATENT, device="cpu")

    def evaluate(step: int, model: torch.nn.Module) -> dict[str, float]:
        z = short_diffusion.sample(model, (1, *LATENT), generator=torch.Generator().manual_seed(step), steps=4)
        with torch.no_grad():
            image = short_diffusion.decode_first_stage(vq, z)
        return {"image_mean": float(image.mean())}

    student = _tiny(1)
    before = [p.detach().clone() for p in student.parameters()]
    result = Trainer(student, config.train_config(), source, loss_fn, device="cpu", eval_fn=evaluate).run()
    assert result.step == 3 and result.skipped_steps == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=False))
    assert source.stats()["teacher_batches"] == 3
    assert decoder_calls.calls == 1 and encoder_calls.calls == 0, "distillation must never encode"


def test_data_based_source_encodes_every_step(short_diffusion: LatentDiffusion) -> None:
    vq = VQModel.from_config(get_latent_preset("vq-f4-small")).eval()
    counter = _Counter(vq.encoder)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = DistillConfig(method="data_based", iterations=2, batch_size=2, clip_denoised=False, lr=1e-3)
    source, loss_fn = latent_source_and_loss(config, teacher=_tiny(0), diffusion=short_diffusion,
                                             latent_shape=LATENT, device="cpu", first_stage=vq, real_images=images)
    assert isinstance(source, EncodingSource)
    Trainer(_tiny(1), config.train_config(), source, loss_fn, device="cpu").run()
    assert counter.calls == 2 and source.stats()["encoded_images"] == 4
    batch = source.next_batch()
    with torch.no_grad():
        all_latents = vq.encode(images.float() / 127.5 - 1.0)
    assert batch.x_start.shape == (2, *LATENT)
    for row in batch.x_start:
        assert min(float((row - z).abs().max()) for z in all_latents) <= 1e-5, "x_start must be an encoded image"


def test_data_free_baseline_trains_on_ddim_latents(tmp_path: Path, short_diffusion: LatentDiffusion) -> None:
    teacher = _tiny(0)
    path = synthesize_latents(teacher, short_diffusion, 3, tmp_path / "synthetic.safetensors", latent_shape=LATENT,
                              batch_size=2, device="cpu", steps=5, progress=False)
    again = synthesize_latents(teacher, short_diffusion, 3, tmp_path / "again.safetensors", latent_shape=LATENT,
                               batch_size=2, device="cpu", steps=5, progress=False)
    a, b = load_file(str(path))["images"], load_file(str(again))["images"]
    assert a.dtype == torch.float16 and a.shape == (3, *LATENT) and torch.equal(a, b)
    expected = short_diffusion.sample(teacher, (2, *LATENT), generator=_synthetic_generator(0), steps=5)
    torch.testing.assert_close(a[:2].float(), expected, atol=2e-3, rtol=2e-3)  # float16 storage
    config = DistillConfig(method="data_free", iterations=2, batch_size=2, clip_denoised=False)
    source, loss_fn = latent_source_and_loss(config, teacher=teacher, diffusion=short_diffusion,
                                             latent_shape=LATENT, device="cpu", synthetic_path=path)
    result = Trainer(_tiny(1), config.train_config(), source, loss_fn, device="cpu").run()
    assert result.step == 2 and result.skipped_steps == 0


def _synthetic_generator(batch: int) -> torch.Generator:
    from training.train.rng import make_generator

    return make_generator("cpu", 0, "synthetic", rank=batch)


def test_latent_methods_refuse_clipping_and_missing_inputs(short_diffusion: LatentDiffusion) -> None:
    with pytest.raises(ValueError, match="never clip"):
        latent_source_and_loss(DistillConfig(method="dynamic"), teacher=_tiny(0), diffusion=short_diffusion,
                               latent_shape=LATENT, device="cpu")
    with pytest.raises(ValueError, match="real_images and first_stage"):
        latent_source_and_loss(DistillConfig(method="data_based", clip_denoised=False), teacher=_tiny(0),
                               diffusion=short_diffusion, latent_shape=LATENT, device="cpu")
