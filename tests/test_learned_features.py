"""`features.kind: learned`: the network trained on the data, its metric names, and the check Heusel et al. ran
on FID: the distance must rise with the strength of each disturbance (noise, blur, salt and pepper, mixing in
another distribution), here on the digits and on a generated 16×16 RGB set.

Sample sizes. Each curve disturbs the very set the reference statistics come from (Heusel et al.'s protocol),
with the same random draws at every strength (see training/eval/disturb.py), so the undisturbed score is 0 and
the sampling error of FD largely cancels between levels: what is left is the disturbance. Measured over three
disturbance seeds, every step to the next level multiplies FD by at least 1.9 on the RGB set and 1.5 on the
digits, and the seed-to-seed ranges of neighbouring levels never overlap (e.g. RGB salt and pepper: level 1
0.33-0.74, level 2 1.6-3.7). So 1,437 digits (the whole training split) and 512 generated images leave a wide
margin, and the network trains in about 15 s and 30 s on one core.
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from training.data import load_digits, synthetic
from training.eval import compute_reference_stats, evaluate_samples, noise_floor
from training.eval.disturb import (
    LEVELS,
    disturbance_curves,
    gaussian_blur,
    mix_in,
    salt_and_pepper,
)
from training.eval.learned import LearnedFeatureExtractor
from training.eval.learned_train import train_learned_features

RGB_N, RGB_SIZE = 512, 16


def _train(images, labels, path, epochs):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread on a shared CPU only adds contention
    try:
        return train_learned_features(images, labels, seed=0, epochs=epochs, out_path=path)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    train = load_digits("train")
    report = _train(train.images, train.labels, tmp_path_factory.mktemp("digits") / "learned.safetensors", 15)
    return report, LearnedFeatureExtractor.from_file(report.path), train.images


@pytest.fixture(scope="module")
def rgb_net(tmp_path_factory):
    images = synthetic.shapes(RGB_N, RGB_SIZE, seed=0)
    report = _train(images, None, tmp_path_factory.mktemp("rgb") / "learned.safetensors", 10)
    return report, LearnedFeatureExtractor.from_file(report.path), images


def _fd_of(extractor, images):
    stats = compute_reference_stats(images, extractor, None)
    return lambda x: evaluate_samples(x, extractor=extractor, real_stats=stats, precision_recall_on=False)["fd_learned"]


def _curves(net, other):
    _, extractor, images = net
    return disturbance_curves(images, other, _fd_of(extractor, images), seed=0)


@pytest.fixture(scope="module")
def digits_curves(digits_net):
    return _curves(digits_net, synthetic.shapes(len(digits_net[2]), 8, seed=5, channels=1))


@pytest.fixture(scope="module")
def rgb_curves(rgb_net):
    return _curves(rgb_net, synthetic.gratings(RGB_N, RGB_SIZE, seed=2))


@pytest.mark.parametrize("disturbance", list(LEVELS))
@pytest.mark.parametrize("dataset", ["digits", "rgb"])
def test_fd_learned_rises_monotonically_with_each_disturbance(dataset, disturbance, request):
    curves = request.getfixturevalue(f"{dataset}_curves")
    scores = curves[disturbance]
    assert len(scores) == 5 and scores[0] == pytest.approx(0.0, abs=1e-6)  # the set against itself
    assert all(lo < hi for lo, hi in itertools.pairwise(scores)), (disturbance, scores)


@pytest.mark.parametrize("dataset", ["digits", "rgb"])
def test_strongest_disturbances_stand_far_above_the_noise_floor(dataset, request):
    """Monotone but microscopic would be no evidence: the strongest level must clear the split-halves noise floor
    (FD between two halves of the set) twice over. Weaker levels may sit below it: Gaussian noise of σ = 32 on the
    smooth generated images is measurable from the paired curve but not from two independent 256-image sets."""
    _, extractor, images = request.getfixturevalue(f"{dataset}_net")
    floor = noise_floor(images, extractor=extractor, seed=0)["fd_learned_noise_floor"]
    curves = request.getfixturevalue(f"{dataset}_curves")
    for name, scores in curves.items():
        assert scores[-1] > 2 * floor, (name, scores, floor)


def test_labelled_data_trains_a_classifier_that_generalises(digits_net):
    report, extractor, _ = digits_net
    assert report.objective == "classifier" and report.num_classes == 10
    assert report.n_held_out == 144 and report.held_out_score > 0.9, report
    features = extractor.extract(load_digits("test").images[:40], batch_size=16)
    assert features.pool.shape == (40, 64) and features.logits.shape == (40, 10)
    sidecar = json.loads(report.path.with_suffix(".json").read_text())
    assert sidecar["feature_space"] == report.space == extractor.space
    assert sidecar["config"]["objective"] == "classifier"


def test_unlabelled_data_trains_a_contrastive_encoder(rgb_net):
    report, extractor, images = rgb_net
    assert report.objective == "contrastive" and report.num_classes == 0
    # Twin retrieval among 2×51 held-out views: chance is 1/101; a network that learned nothing sits near it.
    assert report.held_out_score > 0.2, report
    assert extractor.extract(images[:8]).logits is None


def test_metrics_are_named_for_the_learned_space(rgb_net, digits_net):
    _, extractor, images = rgb_net
    stats = compute_reference_stats(images, extractor, None)
    metrics = evaluate_samples(images[:200], extractor=extractor, real_stats=stats, teacher_stats=stats)
    assert set(metrics) == {"fd_learned", "fd_learned_teacher", "precision_learned", "recall_learned"}
    assert metrics["fd_learned"] == metrics["fd_learned_teacher"] and metrics["precision_learned"] > 0.9
    assert list(noise_floor(images, extractor=extractor)) == ["fd_learned_noise_floor"]
    _, digits_extractor, digits = digits_net
    digits_stats = compute_reference_stats(digits, digits_extractor, None)
    assert "is_learned" in evaluate_samples(digits[:100], extractor=digits_extractor, real_stats=digits_stats)


def test_training_is_deterministic_and_single_class_labels_mean_unlabelled(tmp_path):
    images = synthetic.shapes(64, 12, seed=3)
    runs = [_train(images, np.zeros(64, np.int64), tmp_path / f"n{i}.safetensors", 1) for i in range(2)]
    assert runs[0].space == runs[1].space and runs[0].objective == "contrastive"
    assert LearnedFeatureExtractor.from_file(runs[0].path).extract(images).pool.shape == (64, 64)  # 12 px works


def test_the_extractor_refuses_other_shapes_and_inconsistent_sidecars(rgb_net, tmp_path):
    report, extractor, _ = rgb_net
    with pytest.raises(ValueError, match="16×16×3 images, got 8×8×1"):
        extractor.extract(np.zeros((4, 8, 8, 1), np.uint8))
    path = tmp_path / "l.safetensors"
    path.write_bytes(report.path.read_bytes())
    meta = json.loads(report.path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "feature_space": "learned-cnn-v1:0000"}))
    with pytest.raises(ValueError, match="inconsistent"):
        LearnedFeatureExtractor.from_file(path)
    path.with_suffix(".json").write_text(json.dumps({**meta, "config": {**meta["config"], "width": 8}}))
    with pytest.raises(ValueError, match="do not fit"):
        LearnedFeatureExtractor.from_file(path)


def test_disturbances_keep_their_draws_across_strengths():
    images = synthetic.shapes(50, 16, seed=0)
    weak, strong = salt_and_pepper(images, 0.05, seed=1), salt_and_pepper(images, 0.2, seed=1)
    changed_weak = (weak != images).any(-1)
    assert changed_weak.any() and ((strong != images).any(-1) | ~changed_weak).all()  # weak hits ⊂ strong hits
    other = synthetic.gratings(50, 16, seed=1)

    def swapped(f):
        return {i for i in range(50) if (mix_in(images, other, f, seed=1)[i] != images[i]).any()}

    assert len(swapped(0.1)) == 5 and swapped(0.1) <= swapped(0.5)
    flat = np.full((2, 16, 16, 3), 77, np.uint8)
    np.testing.assert_array_equal(gaussian_blur(flat, 1.5), flat)  # blur preserves a constant image
