"""Stage `features`: the feature space every metric is computed in, and the real data's reference statistics.

digits: a small classifier trained here on the training split (tested on the held-out split it never sees);
inception: the standard FID Inception weights from features.inception_weights (never downloaded).
"""
from __future__ import annotations

from dkdm.console import Context, summary
from dkdm.stages.common import CLASSIFIER_FILE, FEATURES_DIR, REAL_STATS_FILE, load_real_images, make_extractor, write_json
from dkdm.tracking import start_run


def run(ctx: Context) -> None:
    from training.eval.stats import compute_reference_stats

    settings = ctx.settings
    feats = settings.features
    images, labels = load_real_images(settings)
    FEATURES_DIR.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {"kind": feats.kind}
    with start_run(settings, stage="features", run_name=f"features-{feats.kind}") as tracker:
        if feats.kind == "digits":
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
            info.update(space=report.space, train_accuracy=report.train_accuracy, test_accuracy=report.test_accuracy)
            tracker.log_metrics({"classifier_train_accuracy": report.train_accuracy,
                                 "classifier_test_accuracy": report.test_accuracy}, feats.classifier_epochs)
        extractor = make_extractor(settings, ctx.device)
        stats = compute_reference_stats(images, extractor, REAL_STATS_FILE, batch_size=feats.batch_size,
                                        seed=feats.seed, name="real", progress=ctx.progress_enabled)
        info.update(space=extractor.space, real_count=stats.count)
        write_json(FEATURES_DIR / "info.json", info)
        tracker.log_artifact(FEATURES_DIR / "info.json")
    extra = f", classifier test accuracy {info['test_accuracy']:.3f}" if "test_accuracy" in info else ""
    summary(f"features: {feats.kind} space, real statistics of {stats.count} images{extra} -> {FEATURES_DIR}")
