"""The trainer (AdamW, EMA, microbatching, NaN guard, clipping, eval hook / keep-best) and the baselines."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.diffusion import create_diffusion
from training.distill import DistillConfig, build_run, dkdm_losses, load_synthetic, mix_data_limited, synthesize_dataset
from training.distill.objective import hybrid_loss_fn
from training.distill.sources import DatasetSource
from training.models import create_model, get_preset
from training.train import EMA, ListTracker, TrainConfig, Trainer, load_best_weights
from training.train.rng import make_generator

SHAPE = (1, 8, 8)


def _model(preset: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(get_preset(preset))


def _teacher(seed: int = 0) -> nn.Module:
    """ci-teacher with every weight randomised (as the golden fixtures do): default init zeroes the output
    layer, and a teacher that always says eps = 0 would make distillation trivial."""
    model = _model("ci-teacher", seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


class GaussianDataTeacher(nn.Module):
    """The exact epsilon predictor for data ~ N(0, sigma0^2 I) plus a constant variance output v.

    A teacher that is right about its data (unlike a random network) keeps x0 estimates in range, so the
    DKDM loss measures only how far the student is from it.
    """

    def __init__(self, diffusion, sigma0: float = 0.5, v: float = 0.3) -> None:
        super().__init__()
        acp = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float32)
        self.register_buffer("acp", acp)
        self.sigma0, self.v = sigma0, v

    def forward(self, x, t):
        ab = self.acp[t].view(-1, 1, 1, 1)
        eps = torch.sqrt(1 - ab) * x / (ab * self.sigma0**2 + 1 - ab)
        return torch.cat([eps, torch.full_like(x, self.v)], dim=1)


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8)


def _data_trainer(config: TrainConfig, loss_fn=None, **kw) -> Trainer:
    diffusion = create_diffusion(steps=20)
    source = DatasetSource(_images(), 20, batch_size=config.batch_size, device=torch.device("cpu"),
                           generator=make_generator("cpu", 0, "data"),
                           noise_generator=make_generator("cpu", 0, "noise"))
    return Trainer(_model("ci-student", 1), config, source, loss_fn or hybrid_loss_fn(diffusion), device="cpu", **kw)


def test_short_dkdm_distillation_lowers_the_loss():
    diffusion = create_diffusion(steps=50)
    config = DistillConfig(method="dynamic", rho=0.2, batch_size=8, teacher_batch_size=64, iterations=60,
                           lr=2e-3, log_every=10, ema_rate=0.9)
    tracker = ListTracker()
    teacher = GaussianDataTeacher(diffusion)
    trainer = build_run(config, student=_model("ci-student", 1), student_diffusion=diffusion, image_shape=SHAPE,
                        device="cpu", teacher=teacher, teacher_diffusion=diffusion, tracker=tracker)
    # A fixed held-out batch of pool states (all t), scored before and after: no sampling noise in the comparison.
    x_t, t = trainer.source.pool.x[:64].clone(), trainer.source.pool.s[:64] - 1
    with torch.no_grad():
        teacher_out = diffusion.p_mean_variance(teacher, x_t, t, clip_denoised=True)

    def held_out() -> dict[str, float]:
        with torch.no_grad():
            losses = dkdm_losses(diffusion, trainer.model, x_t, t, teacher_out)
        return {k: float(v.mean()) for k, v in losses.items()}

    before = held_out()
    result = trainer.run()
    after = held_out()
    assert result.step == 60 and result.skipped_steps == 0 and len(tracker.series("train/loss")) == 6
    assert after["loss"] < 0.5 * before["loss"], f"loss did not fall: {before} -> {after}"
    assert after["mse"] < 0.2 * before["mse"] and after["vb"] < before["vb"], f"{before} -> {after}"
    assert {"train/mse", "train/vb", "train/lr", "train/skipped_steps"} <= set(tracker.metrics[-1][1])
    assert tracker.params["train.lr"] == 2e-3


def test_non_finite_loss_skips_the_step_and_is_counted():
    diffusion = create_diffusion(steps=20)
    base = hybrid_loss_fn(diffusion)
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        out = base(model, batch)
        if calls["n"] in (2, 3):
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    tracker = ListTracker()
    trainer = _data_trainer(TrainConfig(iterations=4, batch_size=8, log_every=1), flaky, tracker=tracker)
    trainer.train_step()
    snapshot = [p.detach().clone() for p in trainer.model.parameters()]
    ema_snapshot = [p.detach().clone() for p in trainer.ema.model.parameters()]
    trainer.train_step()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, trainer.model.parameters(), strict=False)), (
        "NaN step changed weights")
    assert all(torch.equal(a, b) for a, b in zip(ema_snapshot, trainer.ema.model.parameters(), strict=False))
    result = trainer.run()
    assert result.skipped_steps == 2 and result.step == 4
    assert tracker.series("train/skipped_steps")[-1] == (4, 2.0)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_microbatching_gives_the_same_update():
    torch.manual_seed(0)
    whole = _data_trainer(TrainConfig(iterations=1, batch_size=8, lr=1e-2))
    split = _data_trainer(TrainConfig(iterations=1, batch_size=8, microbatch=3, lr=1e-2))
    whole.train_step()
    split.train_step()
    for a, b in zip(whole.model.parameters(), split.model.parameters(), strict=False):
        assert torch.allclose(a, b, atol=1e-6), "3+3+2 microbatches must match one batch of 8"


def test_gradient_clipping_bounds_the_norm():
    trainer = _data_trainer(TrainConfig(iterations=1, batch_size=8, grad_clip=1e-3))
    trainer.train_step()
    norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in trainer.model.parameters() if p.grad is not None))
    assert float(norm) <= 1e-3 * (1 + 1e-4)


def test_ema_rate_and_warmup():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.1))
    warm = EMA(model, 0.9999, warmup=True)
    assert warm.current_rate() == pytest.approx(0.1)  # (1+0)/(10+0)
    warm.num_updates = 10**6
    assert warm.current_rate() == 0.9999


def test_eval_hook_keeps_the_best_and_stops_early(tmp_path):
    values = iter([3.0, 2.0, 4.0, 5.0, 1.0])
    seen = []

    def eval_fn(step, ema_model):
        seen.append((step, ema_model is trainer.ema.model))
        return {"fid": next(values), "is": 1.0}

    tracker = ListTracker()
    config = TrainConfig(iterations=10, batch_size=4, eval_every=2, select_metric="fid", early_stop_patience=2)
    trainer = _data_trainer(config, tracker=tracker, eval_fn=eval_fn, out_dir=tmp_path)
    result = trainer.run()
    assert [s for s, _ in seen] == [2, 4, 6, 8] and all(is_ema for _, is_ema in seen)
    assert result.stopped_early and result.step == 8
    assert (result.best_step, result.best_value) == (4, 2.0)
    assert tracker.series("eval/fid") == [(2, 3.0), (4, 2.0), (6, 4.0), (8, 5.0)]
    restored = _model("ci-student", 99)
    meta = load_best_weights(tmp_path / "best.safetensors", restored)
    assert meta["step"] == 4 and meta["metrics"]["fid"] == 2.0
    assert (tmp_path / "resume.safetensors").is_file()


def test_eval_without_the_selected_metric_fails_clearly():
    config = TrainConfig(iterations=2, batch_size=4, eval_every=1, select_metric="fid")
    trainer = _data_trainer(config, eval_fn=lambda step, model: {"is": 1.0})
    with pytest.raises(KeyError, match="select_metric 'fid'"):
        trainer.run()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="microbatch"):
        TrainConfig(batch_size=4, microbatch=8)
    with pytest.raises(ValueError, match="data_fraction"):
        DistillConfig(method="data_limited")
    with pytest.raises(ValueError, match="discard_prob"):
        DistillConfig(method="data_free", discard_prob=0.5)
    with pytest.raises(ValueError, match="rho"):
        DistillConfig(rho=0)


def test_data_limited_mix_takes_round_p_n_real_images():
    real = torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1).expand(40, *SHAPE).contiguous()
    synthetic = (100 + torch.arange(50, dtype=torch.uint8)).reshape(50, 1, 1, 1).expand(50, *SHAPE).contiguous()
    mixed = mix_data_limited(real, synthetic, 0.15, seed=0)
    ids = mixed[:, 0, 0, 0].long()
    assert mixed.shape == real.shape
    assert int((ids < 100).sum()) == round(0.15 * 40) == 6
    assert ids.unique().numel() == 40, "drawn without replacement"
    assert torch.equal(mixed, mix_data_limited(real, synthetic, 0.15, seed=0)), "seeded"


def test_synthetic_set_artifact_and_baselines_train(tmp_path):
    diffusion = create_diffusion(steps=4)
    teacher = _teacher()
    path = synthesize_dataset(teacher, diffusion, 10, tmp_path / "synthetic.safetensors", image_shape=SHAPE,
                              batch_size=4, device="cpu", seed=0, progress=False, save_every_batches=1)
    images = load_synthetic(path)
    assert images.shape == (10, *SHAPE) and images.dtype == torch.uint8
    again = synthesize_dataset(teacher, diffusion, 10, tmp_path / "again.safetensors", image_shape=SHAPE,
                               batch_size=4, device="cpu", seed=0, progress=False)
    assert torch.equal(images, load_synthetic(again)), "same seed, same set"
    for method, extra in [("data_free", {}), ("data_limited", {"data_fraction": 0.2}), ("data_based", {})]:
        config = DistillConfig(method=method, batch_size=4, iterations=3, log_every=1, **extra)
        trainer = build_run(config, student=_model("ci-student", 1), student_diffusion=diffusion,
                            image_shape=SHAPE, device="cpu", real_images=_images(10), synthetic_images=images)
        result = trainer.run()
        assert result.step == 3 and result.skipped_steps == 0
        assert all(torch.isfinite(p.detach()).all() for p in trainer.model.parameters())
