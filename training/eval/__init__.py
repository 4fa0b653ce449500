"""Sampling and evaluation: samples as uint8 arrays, feature spaces, the FID family, costs, early stopping.

Public API:
    generate_samples(model, diffusion, n, *, batch_size, seed, device, use_ddim=False, eta=0.0, ...) -> uint8 NHWC
    load_sampler(checkpoint, *, respacing=None, ema=True, device) -> (model, diffusion)
    save_samples_npz(path, images), save_grid(path, images, nrow)
    InceptionFeatureExtractor(weights_path=None, *, device), DigitsFeatureExtractor.from_file(path)
    train_digits_classifier(images, labels, *, seed, epochs, out_path, ...) -> ClassifierReport
    LearnedFeatureExtractor.from_file(path), train_learned_features(images, labels=None, *, seed, epochs, out_path)
    compute_reference_stats(images, extractor, out_path) -> ReferenceStats, load_reference_stats(path)
    evaluate_samples(samples, *, extractor, real_stats, teacher_stats=None) -> dict[str, float]
    noise_floor(samples, *, extractor) -> {"<fd>_noise_floor": value}
    make_fd_metric(extractor, reference_stats, diffusion, *, n_samples, batch_size, seed, device, metric_name)
    CostFigures, measure_generation, seconds_per_100_iterations, peak_memory_mb, reset_peak_memory, device_name
"""
from training.eval.costs import (
    CostFigures,
    device_name,
    measure_generation,
    peak_memory_mb,
    reset_peak_memory,
    seconds_per_100_iterations,
)
from training.eval.early_stop import BestTracker, make_fd_metric
from training.eval.evaluate import evaluate_features, evaluate_samples, noise_floor
from training.eval.extractor import (
    DIGITS_METRICS,
    INCEPTION_METRICS,
    LEARNED_METRICS,
    FeatureExtractor,
    Features,
    MetricNames,
)
from training.eval.features import (
    ClassifierReport,
    DigitsFeatureExtractor,
    train_digits_classifier,
)
from training.eval.inception import (
    InceptionFeatureExtractor,
    default_weights_path,
    resolve_weights_path,
)
from training.eval.learned import LearnedFeatureExtractor
from training.eval.learned_train import LearnedReport, train_learned_features
from training.eval.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    knn_radii,
    precision_recall,
    split_halves_fd,
)
from training.eval.sampling import (
    generate_samples,
    load_sampler,
    make_grid,
    save_grid,
    save_samples_npz,
)
from training.eval.stats import (
    ReferenceStats,
    compute_reference_stats,
    load_reference_stats,
    save_reference_stats,
)

__all__ = [
    "DIGITS_METRICS",
    "INCEPTION_METRICS",
    "LEARNED_METRICS",
    "BestTracker",
    "ClassifierReport",
    "CostFigures",
    "DigitsFeatureExtractor",
    "FeatureExtractor",
    "Features",
    "InceptionFeatureExtractor",
    "LearnedFeatureExtractor",
    "LearnedReport",
    "MetricNames",
    "ReferenceStats",
    "compute_reference_stats",
    "default_weights_path",
    "device_name",
    "evaluate_features",
    "evaluate_samples",
    "feature_statistics",
    "frechet_distance",
    "generate_samples",
    "inception_score",
    "knn_radii",
    "load_reference_stats",
    "load_sampler",
    "make_fd_metric",
    "make_grid",
    "measure_generation",
    "noise_floor",
    "peak_memory_mb",
    "precision_recall",
    "reset_peak_memory",
    "resolve_weights_path",
    "save_grid",
    "save_reference_stats",
    "save_samples_npz",
    "seconds_per_100_iterations",
    "split_halves_fd",
    "train_digits_classifier",
    "train_learned_features",
]
