"""Feature spaces (digits classifier, Inception-v3 and its stand-in), reference statistics, evaluate_samples."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.data import load_digits
from training.eval import (
    DigitsFeatureExtractor,
    InceptionFeatureExtractor,
    compute_reference_stats,
    evaluate_samples,
    load_reference_stats,
    noise_floor,
    train_digits_classifier,
)
from training.eval.inception import WEIGHTS_ENV, WEIGHTS_FILE, default_weights_path, resolve_weights_path


@contextmanager
def one_thread():
    # The classifier's ops are tiny; on a shared, busy CPU two threads spin against each other (10× slower).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, object]:
    train, test = load_digits("train"), load_digits("test")
    path = tmp_path_factory.mktemp("clf") / "digits_classifier.safetensors"
    with one_thread():
        report = train_digits_classifier(
            train.images, train.labels, seed=0, epochs=20, out_path=path,
            test_images=test.images, test_labels=test.labels,
        )
    return path, report


@pytest.fixture(scope="module")
def extractor(classifier) -> DigitsFeatureExtractor:
    return DigitsFeatureExtractor.from_file(classifier[0])


def test_digits_classifier_is_accurate_on_held_out_digits(classifier):
    path, report = classifier
    assert report.test_accuracy > 0.95, report
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["test_accuracy"] == report.test_accuracy and sidecar["n_test"] == 360
    assert sidecar["feature_space"] == report.space


def test_digits_classifier_training_is_deterministic(tmp_path):
    train, test = load_digits("train"), load_digits("test")
    with one_thread():
        runs = [
            train_digits_classifier(
                train.images[:300], train.labels[:300], seed=0, epochs=2, out_path=tmp_path / f"c{i}.safetensors",
                test_images=test.images, test_labels=test.labels,
            )
            for i in range(2)
        ]
    assert runs[0].space == runs[1].space  # same seed, same weights, same feature-space name


def test_digits_extractor_gives_64d_features_and_10_logits(extractor):
    features = extractor.extract(load_digits("test").images[:50], batch_size=16)
    assert features.pool.shape == (50, 64) and features.logits.shape == (50, 10) and features.spatial is None
    assert extractor.metric_names.fd == "fd_digits"


def test_digits_extractor_refuses_other_shapes(extractor):
    with pytest.raises(ValueError, match="8×8×1"):
        extractor.extract(np.zeros((4, 32, 32, 3), np.uint8))


def test_digits_extractor_refuses_a_sidecar_that_does_not_match_the_weights(classifier, tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(classifier[0].read_bytes())
    meta = json.loads(classifier[0].with_suffix(".json").read_text())
    meta["feature_space"] = "digits-cnn-v1:0000000000000000"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="inconsistent"):
        DigitsFeatureExtractor.from_file(path)


def test_fd_digits_rises_monotonically_with_noise(extractor):
    real = load_digits("train")
    stats = compute_reference_stats(real.images, extractor, None)
    test = load_digits("test").images
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (0, 15, 40, 80, 160):
        noisy = np.clip(test + rng.normal(0, sigma, test.shape), 0, 255).astype(np.uint8)
        scores.append(evaluate_samples(noisy, extractor=extractor, real_stats=stats)["fd_digits"])
    assert all(lo < hi for lo, hi in zip(scores, scores[1:], strict=False)), scores


def test_reference_stats_round_trip_and_evaluation(extractor, tmp_path):
    real, test = load_digits("train"), load_digits("test")
    path = tmp_path / "ref.safetensors"
    computed = compute_reference_stats(real.images, extractor, path, max_pr_features=1000)
    loaded = load_reference_stats(path, expected_space=extractor.space)
    np.testing.assert_array_equal(loaded.mu, computed.mu)
    np.testing.assert_array_equal(loaded.sigma, computed.sigma)
    assert loaded.count == 1437 and loaded.pr_features.shape == (1000, 64) and loaded.k == 3
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["feature_space"] == extractor.space and len(sidecar["input_sha256"]) == 64

    metrics = evaluate_samples(test.images, extractor=extractor, real_stats=loaded, teacher_stats=loaded)
    assert set(metrics) == {"fd_digits", "fd_digits_teacher", "is_digits", "precision_digits", "recall_digits"}
    assert metrics["fd_digits"] == metrics["fd_digits_teacher"]
    assert 0 < metrics["fd_digits"] < 20  # held-out real digits sit close to the training digits
    assert metrics["is_digits"] > 7  # a 99%-accurate classifier on 10 balanced classes
    assert metrics["precision_digits"] > 0.7 and metrics["recall_digits"] > 0.7


def test_noise_floor_is_named_for_the_space(extractor):
    floor = noise_floor(load_digits("all").images, extractor=extractor, seed=0)
    assert list(floor) == ["fd_digits_noise_floor"] and 0 < floor["fd_digits_noise_floor"] < 20


def test_statistics_of_another_feature_space_are_refused(extractor, tmp_path):
    path = tmp_path / "ref.safetensors"
    compute_reference_stats(load_digits("test").images, extractor, path)
    with pytest.raises(ValueError, match="feature space"):
        load_reference_stats(path, expected_space="inception-v3-fid:2015-12-05")
    stand_in = InceptionFeatureExtractor(network=StandInInception(), space="stand-in")
    with pytest.raises(ValueError, match="feature space 'digits-cnn-v1"):
        evaluate_samples(np.zeros((20, 8, 8, 3), np.uint8), extractor=stand_in, real_stats=load_reference_stats(path))


def test_reference_stats_without_sidecar_are_refused(extractor, tmp_path):
    path = tmp_path / "ref.safetensors"
    compute_reference_stats(load_digits("test").images, extractor, path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="no sidecar"):
        load_reference_stats(path)


# --- Inception ---------------------------------------------------------------------------------------


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch1x1 = _ConvBlock(3, 8)

    def forward(self, x):
        return self.branch1x1(x)


class StandInInception(nn.Module):
    """Same interface as the FID network (uint8 in; pool features and logits out; a Mixed_6d.branch1x1 layer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.Mixed_6d = _Mixed()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        # 5×5 maps keep the stand-in's sFID vectors at 175-d; the real 17×17×7 size is checked below.
        x = torch.nn.functional.interpolate(x.float() / 128 - 1, size=(5, 5), mode="bilinear")
        pool = self.Mixed_6d(x).mean(dim=(2, 3))
        return pool, self.fc(pool)


def _images(n: int, seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_inception_path_with_a_stand_in_network(tmp_path):
    extractor = InceptionFeatureExtractor(network=StandInInception(), space="stand-in")
    features = extractor.extract(_images(40, 0), batch_size=16)
    assert features.spatial.shape == (40, 5 * 5 * 7)  # sFID: the first 7 channels of the layer's map
    assert features.pool.shape == (40, 8) and features.logits.shape == (40, 5)
    real = compute_reference_stats(_images(60, 1), extractor, tmp_path / "real.safetensors")
    teacher = compute_reference_stats(_images(60, 2), extractor, tmp_path / "teacher.safetensors")
    assert load_reference_stats(tmp_path / "real.safetensors").spatial_mu.shape == (175,)
    metrics = evaluate_samples(_images(40, 3), extractor=extractor, real_stats=real, teacher_stats=teacher)
    assert set(metrics) == {"fid", "sfid", "is", "precision", "recall", "fid_teacher", "sfid_teacher"}
    assert all(np.isfinite(v) for v in metrics.values())


def test_grey_images_are_fed_to_inception_as_rgb():
    extractor = InceptionFeatureExtractor(network=StandInInception(), space="stand-in")
    grey = _images(4, 0)[..., :1]
    torch.testing.assert_close(
        extractor.extract(grey).pool, extractor.extract(np.repeat(grey, 3, axis=3)).pool
    )


def test_a_stand_in_may_not_borrow_the_real_space_name():
    with pytest.raises(ValueError, match="own `space`"):
        InceptionFeatureExtractor(network=StandInInception())


def test_missing_inception_weights_name_the_path_the_file_and_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    wanted = tmp_path / "nowhere" / WEIGHTS_FILE
    with pytest.raises(FileNotFoundError) as err:
        InceptionFeatureExtractor(wanted)
    message = str(err.value)
    assert str(wanted) in message and "https://" in message and WEIGHTS_FILE in message and WEIGHTS_ENV in message
    monkeypatch.setenv(WEIGHTS_ENV, str(wanted))
    with pytest.raises(FileNotFoundError, match=str(wanted)):
        resolve_weights_path()


def test_inception_weights_that_are_not_plain_tensors_are_refused(tmp_path):
    import pickle

    bad = tmp_path / WEIGHTS_FILE
    bad.write_bytes(pickle.dumps({"w": StandInInception}, protocol=2))  # a class reference: arbitrary unpickling
    with pytest.raises(ValueError, match="refused: this Inception weights file contains pickled code"):
        InceptionFeatureExtractor(bad)


def test_real_inception_architecture_gives_the_adm_feature_shapes(tmp_path, monkeypatch):
    """torch-fidelity's network with random weights: checks the layer name and sizes, not the numbers."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / WEIGHTS_FILE
    torch.save({}, empty)
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
    extractor = InceptionFeatureExtractor(empty)
    features = extractor.extract(_images(2, 0, size=32), batch_size=2)
    assert features.pool.shape == (2, 2048)
    assert features.logits.shape == (2, 1008)
    assert features.spatial.shape == (2, 2023)


def _real_weights_present() -> bool:
    try:
        resolve_weights_path()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _real_weights_present(),
    reason=f"FID Inception weights absent: put {WEIGHTS_FILE} at {default_weights_path()} or set {WEIGHTS_ENV}",
)
def test_real_inception_features(tmp_path):
    extractor = InceptionFeatureExtractor()
    images = _images(20, 0, size=32)
    features = extractor.extract(images, batch_size=10)
    assert features.pool.shape == (20, 2048) and features.spatial.shape == (20, 2023)
    assert (features.pool >= 0).all()  # pool_3 follows a ReLU
    stats = compute_reference_stats(images, extractor, tmp_path / "r.safetensors")
    metrics = evaluate_samples(images, extractor=extractor, real_stats=stats)
    assert abs(metrics["fid"]) < 1e-3 * np.trace(stats.sigma)  # the set against itself
    assert 1.0 <= metrics["is"] < 1008
