"""Stage `features`: the feature space every metric is computed in, and the real data's reference statistics.

digits: a small classifier trained here on the training split (tested on the held-out split it never sees);
learned: a small network trained here on the real images of any shape (a classifier when they have labels,
contrastive otherwise), scored on a held-out tenth;
inception: the standard FID Inception weights from features.inception_weights (never downloaded).
"""
from __future__ import annotations

from typing import Any

from dkdm.console import Context, summary
from dkdm.stages.common import (
    CLASSIFIER_FILE,
    FEATURES_DIR,
    LEARNED_FILE,
    REAL_STATS_FILE,
    load_real_images,
    make_extractor,
    write_json,
)
from dkdm.tracking import start_run


def _train_digits(feats: Any, images: Any, labels: Any, info: dict[str, object], tracker: Any) -> str:
    from training.data import load_digits
    from training.eval.features import train_digits_classifier

    if labels is None:
        raise ValueError("features.kind 'digits' needs labelled data (the digits dataset)")
    held_out = load_digits("test")
    report = train_digits_classifier(
        images, labels, seed=feats.seed, epochs=feats.classifier_epochs, out_path=CLASSIFIER_FILE,
        test_images=held_out.images, test_labels=held_out.labels, batch_size=feats.classifier_batch_size,
        lr=feats.classifier_lr,
    )
    info.update(train_accuracy=report.train_accuracy, test_accuracy=report.test_accuracy)
    tracker.log_metrics({"classifier_train_accuracy": report.train_accuracy,
                         "classifier_test_accuracy": report.test_accuracy}, feats.classifier_epochs)
    return f", classifier test accuracy {report.test_accuracy:.3f}"


def _train_learned(feats: Any, images: Any, labels: Any, info: dict[str, object], tracker: Any) -> str:
    from training.eval.learned_train import train_learned_features

    report = train_learned_features(images, labels, seed=feats.seed, epochs=feats.classifier_epochs,
                                    out_path=LEARNED_FILE, batch_size=feats.classifier_batch_size,
                                    lr=feats.classifier_lr)
    info.update(objective=report.objective, num_classes=report.num_classes, n_train=report.n_train,
                n_held_out=report.n_held_out, held_out_score=report.held_out_score,
                train_seconds=report.train_seconds)
    scores = {"features_train_seconds": report.train_seconds}
    if report.held_out_score is not None:
        scores["features_held_out_score"] = report.held_out_score
    tracker.log_metrics(scores, feats.classifier_epochs)
    what = "accuracy" if report.objective == "classifier" else "twin retrieval"
    held = f", held-out {what} {report.held_out_score:.3f}" if report.held_out_score is not None else ""
    return f", {report.objective} trained in {report.train_seconds:.1f}s{held}"


TRAINERS = {"digits": _train_digits, "learned": _train_learned}


def run(ctx: Context) -> None:
    from training.eval.stats import compute_reference_stats

    settings = ctx.settings
    feats = settings.features
    images, labels = load_real_images(settings)
    FEATURES_DIR.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {"kind": feats.kind}
    extra = ""
    with start_run(settings, stage="features", run_name=f"features-{feats.kind}") as tracker:
        if feats.kind in TRAINERS:
            extra = TRAINERS[feats.kind](feats, images, labels, info, tracker)
        extractor = make_extractor(settings, ctx.device)
        stats = compute_reference_stats(images, extractor, REAL_STATS_FILE, batch_size=feats.batch_size,
                                        seed=feats.seed, name="real", progress=ctx.progress_enabled)
        info.update(space=extractor.space, real_count=stats.count)
        write_json(FEATURES_DIR / "info.json", info)
        tracker.log_artifact(FEATURES_DIR / "info.json")
    summary(f"features: {feats.kind} space, real statistics of {stats.count} images{extra} -> {FEATURES_DIR}")
