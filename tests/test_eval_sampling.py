"""Sampling to uint8 arrays, the ADM .npz and the grid, cost figures, and the early-stopping metric."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from training.diffusion import create_diffusion
from training.eval import (
    BestTracker,
    CostFigures,
    device_name,
    generate_samples,
    load_sampler,
    make_fd_metric,
    make_grid,
    measure_generation,
    peak_memory_mb,
    reset_peak_memory,
    save_grid,
    save_samples_npz,
    seconds_per_100_iterations,
)
from training.eval.features import DigitsCNN, DigitsFeatureExtractor
from training.eval.stats import stats_from_features


class ToyEps(nn.Module):
    """A per-pixel network (no cross-sample ops) with learned-sigma output channels, like the ADM UNet."""

    def __init__(self, channels: int, image_size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.config = type("Config", (), {"in_channels": channels, "image_size": image_size})()

    def forward(self, x, t):
        return torch.tanh(self.net(x)) + 0.001 * t.float().reshape(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def diffusion():
    return create_diffusion(steps=100, timestep_respacing="10")


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 6)])
def test_samples_are_uint8_nhwc_and_deterministic(diffusion, channels, size):
    model = ToyEps(channels, size)
    a = generate_samples(model, diffusion, 5, batch_size=2, seed=3, device="cpu", progress=False)
    b = generate_samples(model, diffusion, 5, batch_size=2, seed=3, device="cpu", progress=False)
    c = generate_samples(model, diffusion, 5, batch_size=2, seed=4, device="cpu", progress=False)
    assert a.dtype == np.uint8 and a.shape == (5, size, size, channels)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5
    assert a.min() < 64 and a.max() > 192  # spans the range, not stuck at one value


def test_samples_do_not_depend_on_the_batch_size(diffusion):
    model = ToyEps(1, 8)
    small = generate_samples(model, diffusion, 7, batch_size=2, seed=11, device="cpu", progress=False)
    large = generate_samples(model, diffusion, 7, batch_size=7, seed=11, device="cpu", progress=False)
    # Each sample has its own noise stream; only float rounding inside the network may differ (≤ 1 level).
    assert np.abs(small.astype(int) - large.astype(int)).max() <= 1
    assert (small == large).mean() > 0.99


def test_ddim_is_deterministic_at_eta_zero_and_differs_from_ancestral(diffusion):
    model = ToyEps(1, 8)
    ddim = generate_samples(model, diffusion, 4, batch_size=4, seed=0, device="cpu", use_ddim=True, progress=False)
    again = generate_samples(model, diffusion, 4, batch_size=4, seed=0, device="cpu", use_ddim=True, progress=False)
    ancestral = generate_samples(model, diffusion, 4, batch_size=4, seed=0, device="cpu", progress=False)
    np.testing.assert_array_equal(ddim, again)
    assert (ddim != ancestral).any()
    noisy = generate_samples(model, diffusion, 4, batch_size=4, seed=0, device="cpu", use_ddim=True, eta=1.0,
                             progress=False)
    assert (noisy != ddim).any()


def test_sampling_restores_the_training_mode(diffusion):
    model = ToyEps(1, 8).train()
    generate_samples(model, diffusion, 1, batch_size=1, seed=0, device="cpu", progress=False)
    assert model.training


def test_sampling_needs_a_shape_for_networks_without_config(diffusion):
    model = nn.Conv2d(1, 2, 1)
    with pytest.raises(ValueError, match="image_size= and channels="):
        generate_samples(lambda x, t: model(x), diffusion, 1, batch_size=1, seed=0, device="cpu", progress=False)
    out = generate_samples(lambda x, t: model(x), diffusion, 2, batch_size=1, seed=0, device="cpu", progress=False,
                           image_size=4, channels=1)
    assert out.shape == (2, 4, 4, 1)


def test_npz_is_in_adm_format_and_written_atomically(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    path = save_samples_npz(tmp_path / "out" / "samples.npz", images)
    with np.load(path, allow_pickle=False) as data:
        assert data.files == ["arr_0"]
        np.testing.assert_array_equal(data["arr_0"], images)
    assert [p.name for p in path.parent.iterdir()] == ["samples.npz"]  # no temp file left behind


def test_npz_refuses_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_samples_npz(tmp_path / "s.npz", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\.npz"):
        save_samples_npz(tmp_path / "s.png", np.zeros((2, 8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_grid_layout_and_png(tmp_path):
    images = np.full((5, 4, 4, 1), 200, np.uint8)
    grid = make_grid(images, nrow=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert grid[1:5, 1:5].min() == 200 and grid[0].max() == 0  # tiles with a black border
    assert grid[6:10, 11:15].max() == 0  # the sixth slot is empty
    path = save_grid(tmp_path / "grid.png", images, nrow=3, scale=4)
    with Image.open(path) as png:
        assert png.size == (4 * 20, 4 * 14) and png.mode == "L"  # default padding 2: 3·(4+2)+2 by 2·(4+2)+2


def test_load_sampler_from_a_dkdm_checkpoint(tmp_path):
    from training.models import create_model, get_preset, save_checkpoint

    preset = get_preset("ci-student")
    model = create_model(preset)
    path = save_checkpoint(tmp_path / "student", model, model_config=preset,
                           diffusion_config={"steps": 100, "noise_schedule": "cosine", "learn_sigma": True})
    loaded, diffusion = load_sampler(path, device="cpu")
    assert diffusion.num_timesteps == 50  # the paper's 50 respaced IDDPM steps
    images = generate_samples(loaded, diffusion, 3, batch_size=3, seed=0, device="cpu", progress=False)
    assert images.shape == (3, preset["image_size"], preset["image_size"], preset["in_channels"])
    _, short = load_sampler(path, respacing="ddim5", device="cpu")
    assert short.num_timesteps == 5


def test_cost_figures(diffusion):
    model = ToyEps(1, 8)
    figures = measure_generation(model, diffusion, batch_size=128, device="cpu")
    assert set(figures) == {"gen_seconds_256"} and figures["gen_seconds_256"] > 0  # 10 steps: no 50-step figure
    fifty = create_diffusion(steps=100, timestep_respacing="50")
    figures = measure_generation(model, fifty, batch_size=256, device="cpu")
    assert figures["images_per_second_50steps"] == pytest.approx(256 / figures["gen_seconds_256"])

    calls = []
    per_100 = seconds_per_100_iterations(lambda: (calls.append(1), time.sleep(0.002)), iterations=10, warmup=2)
    assert len(calls) == 12 and 0.2 <= per_100 < 2.0  # 10 × ≥2 ms scaled to 100 iterations: ≥ 0.2 s

    reset_peak_memory("cpu")
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    assert peak_memory_mb("cpu") >= 64 and block.sum() > 0
    assert device_name("cpu").startswith("cpu")
    costs = CostFigures(device_name=device_name("cpu"), gen_seconds_256=1.0, peak_memory_mb=2.0)
    assert costs.metrics() == {"gen_seconds_256": 1.0, "peak_memory_mb": 2.0}


def test_early_stopping_metric_is_seeded_and_named(diffusion):
    torch.manual_seed(0)
    extractor = DigitsFeatureExtractor(DigitsCNN())
    reference = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    stats = stats_from_features(extractor.extract(reference), feature_space=extractor.space, input_hash="x")
    eval_fn = make_fd_metric(extractor, stats, diffusion, n_samples=32, batch_size=16, seed=0, device="cpu",
                             metric_name="fd_digits_teacher")
    model = ToyEps(1, 8).train()
    first, second = eval_fn(100, model), eval_fn(200, model)
    assert list(first) == ["fd_digits_teacher"] and first == second and first["fd_digits_teacher"] > 0
    assert model.training
    with pytest.raises(ValueError, match="feature space"):
        make_fd_metric(extractor, stats_from_features(extractor.extract(reference), feature_space="other",
                                                      input_hash="x"),
                       diffusion, n_samples=8, batch_size=8, seed=0, device="cpu", metric_name="fd_digits_teacher")


def test_best_tracker_keeps_the_lowest_and_stops_after_patience():
    tracker = BestTracker(patience=2)
    assert tracker.update(10, 5.0) and tracker.update(20, 4.0)
    assert not tracker.update(30, 4.5) and not tracker.should_stop
    assert not tracker.update(40, 4.0) and tracker.should_stop
    assert (tracker.best_step, tracker.best_value) == (20, 4.0)
