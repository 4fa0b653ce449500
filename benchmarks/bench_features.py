"""The learned feature network: its training time at the pipeline's sizes, and the disturbance table.

Times `train_learned_features` where the pipeline calls it (the digits at `ci` size, 256 images, and at the
default's 1,437; the 16×16 RGB bring-your-own-data CI profile, 256 images) and prints, for the digits and a
generated 16×16 RGB set, the FD at 0 and 4 strengths of each disturbance (the check tests/test_learned_features.py
asserts).

    python benchmarks/bench_features.py --threads 1
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from training.data import load_digits, synthetic
from training.eval import compute_reference_stats, evaluate_samples
from training.eval.disturb import LEVELS, disturbance_curves
from training.eval.learned import LearnedFeatureExtractor
from training.eval.learned_train import train_learned_features


def _train(images, labels, epochs, tmp):
    report = train_learned_features(images, labels, seed=0, epochs=epochs, out_path=Path(tmp) / "n.safetensors")
    return report, LearnedFeatureExtractor.from_file(report.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="the CPU profiles run one thread")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_digits("train")
    rgb = synthetic.shapes(512, 16, seed=0)
    cases = [("digits, ci (labels)", digits.images[:256], digits.labels[:256], 2),
             ("digits, default (labels)", digits.images, digits.labels, 30),
             ("16x16x3 npz, own data (no labels)", rgb[:256], None, 10)]
    print(f"torch threads: {args.threads}\n\n| data | images | epochs | objective | train s | held-out score |")
    print("|---|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, images, labels, epochs in cases:
            report, _ = _train(images, labels, epochs, tmp)
            print(f"| {name} | {len(images)} | {epochs} | {report.objective} | {report.train_seconds:.1f} | "
                  f"{report.held_out_score:.3f} |")
        sets = [("digits (1437, classifier, 15 epochs)", digits.images, digits.labels, 15,
                 synthetic.shapes(len(digits.images), 8, seed=5, channels=1)),
                ("shapes 16x16x3 (512, contrastive, 10 epochs)", rgb, None, 10, synthetic.gratings(512, 16, seed=2))]
        for name, images, labels, epochs, other in sets:
            _, extractor = _train(images, labels, epochs, tmp)
            stats = compute_reference_stats(images, extractor, None)
            curves = disturbance_curves(images, other, lambda x, e=extractor, s=stats: evaluate_samples(
                x, extractor=e, real_stats=s, precision_recall_on=False)["fd_learned"])
            print(f"\n{name}: fd_learned at strength 0 and each level\n\n| disturbance | levels | FD |\n|---|---|---|")
            for dist, scores in curves.items():
                levels = ", ".join(f"{v:g}" for v in (0, *LEVELS[dist]))
                print(f"| {dist} | {levels} | {' < '.join(f'{s:.3g}' for s in scores)} |")


if __name__ == "__main__":
    main()
