"""The metric functions against their definitions and against torchmetrics / torch-fidelity / scipy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from training.eval.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    inception_score,
    knn_radii,
    precision_recall,
    split_halves_fd,
)


def gaussian_features(n: int, dim: int, *, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(1234)) / dim**0.5  # shared correlation
    return (torch.randn(n, dim, generator=g, dtype=torch.float64) @ mixing.double()) * scale + shift


def test_fd_of_a_set_with_itself_is_zero():
    x = gaussian_features(400, 16, seed=0)
    mu, sigma = feature_statistics(x)
    # sqrtm of Σ² in float64 recovers Σ to ~1e-12 relative; 1e-9 of the trace leaves room for that and no more.
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_fd_matches_torchmetrics_torch_fidelity_and_the_formula():
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torchmetrics.image.fid import _compute_fid

    a, b = gaussian_features(500, 12, seed=1), gaussian_features(450, 12, seed=2, shift=0.3, scale=1.4)
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    ours = frechet_distance(mu1, s1, mu2, s2)
    torchmetrics_fd = float(_compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))))
    fidelity_fd = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)[
        "frechet_inception_distance"
    ]
    formula = float(
        (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    )
    assert ours > 1.0  # distinct sets, so agreement below is not agreement on ≈0
    # All float64; eigvals vs sqrtm differ by rounding only: 1e-9 relative.
    for other in (torchmetrics_fd, fidelity_fd, formula):
        assert ours == pytest.approx(other, rel=1e-9)


def test_fd_full_pipeline_matches_torchmetrics_metric_with_the_same_feature_network():
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6)).double()
    real = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    fake = (real.double() * 0.8 + 20).to(torch.uint8)

    class Features(torch.nn.Module):
        num_features = 6

        def forward(self, x):
            return net(x.double())

    metric = FrechetInceptionDistance(feature=Features(), reset_real_features=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    ours = frechet_distance_of_features(net(fake.double()).detach(), net(real.double()).detach())
    # torchmetrics accumulates sums in float64; ours uses numpy's cov: same math, rounding apart.
    assert ours == pytest.approx(expected, rel=1e-6)


def test_fd_rises_monotonically_with_growing_corruption():
    clean = gaussian_features(600, 10, seed=4)
    reference = gaussian_features(600, 10, seed=5)
    g = torch.Generator().manual_seed(6)
    scores = [
        frechet_distance_of_features(clean + s * torch.randn(clean.shape, generator=g, dtype=torch.float64), reference)
        for s in (0.0, 0.25, 0.5, 1.0, 2.0)
    ]
    assert all(lo < hi for lo, hi in zip(scores, scores[1:], strict=False)), scores


def test_fd_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fd_survives_singular_covariances():
    x = gaussian_features(5, 20, seed=7)  # 5 samples in 20-d: rank-4 covariance
    y = gaussian_features(5, 20, seed=8)
    assert np.isfinite(frechet_distance_of_features(x, y))


def test_inception_score_of_a_uniform_classifier_is_one():
    assert inception_score(torch.zeros(100, 10)) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    labels = torch.arange(200) % 10  # every split of 20 holds each class twice
    logits = torch.nn.functional.one_hot(labels, 10).double() * 60.0
    assert inception_score(logits, splits=10) == pytest.approx(10.0, rel=1e-9)


def test_inception_score_needs_enough_samples_for_its_splits():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(5, 10), splits=10)


def test_knn_radii_match_brute_force():
    x = gaussian_features(120, 5, seed=9).float()
    d = torch.from_numpy(np.linalg.norm(x.numpy()[:, None] - x.numpy()[None], axis=-1))
    expected = d.sort(dim=1).values[:, 3]  # index 0 is the point itself
    torch.testing.assert_close(knn_radii(x, 3, batch_size=17), expected, rtol=1e-4, atol=1e-4)


def test_precision_recall_match_torch_fidelity():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    real = gaussian_features(300, 8, seed=10).float()
    fake = gaussian_features(300, 8, seed=11, shift=0.5, scale=0.8).float()
    precision, recall = precision_recall(real, fake, k=3, batch_size=64)
    ref_precision, ref_recall = calculate_precision_recall_full(fake, real, neighborhood=3)
    assert precision == pytest.approx(ref_precision, abs=1e-6)
    assert recall == pytest.approx(ref_recall, abs=1e-6)


def test_precision_recall_on_gaussians_behave_as_the_paper_describes():
    real = gaussian_features(500, 8, seed=12).float()
    same_p, same_r = precision_recall(real, gaussian_features(500, 8, seed=13).float())
    shifted_p, _ = precision_recall(real, gaussian_features(500, 8, seed=14, shift=1.5).float())
    narrow_p, narrow_r = precision_recall(real, gaussian_features(500, 8, seed=15, scale=0.3).float())
    wide_p, wide_r = precision_recall(real, gaussian_features(500, 8, seed=16, scale=2.5).float())
    assert same_p > 0.6 and same_r > 0.6
    assert shifted_p < same_p - 0.3  # support moved away: fewer fakes land on the real manifold
    assert narrow_r < same_r - 0.3 and narrow_p >= same_p  # narrower support: real variety missed
    assert wide_p < same_p - 0.3 and wide_r >= same_r - 0.05  # wider support: many fakes off-manifold


def test_split_halves_fd_is_small_for_one_distribution_and_seeded():
    x = gaussian_features(1000, 6, seed=17)
    floor = split_halves_fd(x, seed=0)
    assert floor == split_halves_fd(x, seed=0)
    assert 0 < floor < frechet_distance_of_features(x, gaussian_features(1000, 6, seed=18, shift=0.5))
