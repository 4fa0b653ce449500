"""Does `fd_learned` rank models as `fd_digits` does? Rescore a finished digits pipeline run in the learned space.

Reads an `outputs/` folder of a digits profile (`dvc repro` of `default` or `ci`): the frozen training images,
each evaluated run's samples and its `fd_digits`. Trains the learned feature network on those images (as the
`features` stage would with `features.kind: learned`), scores every run's samples in it, and prints both scores
per run and Spearman's rank correlation between them.

    python benchmarks/fd_learned_vs_digits.py --outputs outputs --epochs 30
    python benchmarks/fd_learned_vs_digits.py --disturbed   # no pipeline run: 17 disturbed held-out digit sets
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from training.data import load_digits, synthetic
from training.eval import compute_reference_stats, evaluate_samples
from training.eval.disturb import LEVELS, disturbance_curves
from training.eval.features import DigitsFeatureExtractor, train_digits_classifier
from training.eval.learned import LearnedFeatureExtractor
from training.eval.learned_train import train_learned_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unlabelled", action="store_true", help="ignore the labels: the contrastive network")
    parser.add_argument("--disturbed", action="store_true",
                        help="rank the held-out digits under 4 levels of each disturbance instead of pipeline runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.disturbed:
        return rank_disturbed(args)
    with np.load(args.outputs / "data" / "dataset.npz") as data:
        images = data["arr_0"]
        labels = None if args.unlabelled or "arr_1" not in data.files else data["arr_1"]
    with tempfile.TemporaryDirectory() as tmp:
        report = train_learned_features(images, labels, seed=args.seed, epochs=args.epochs,
                                        out_path=Path(tmp) / "learned.safetensors")
        extractor = LearnedFeatureExtractor.from_file(report.path)
    print(f"learned network: {report.objective}, {report.n_train} images, {args.epochs} epochs, "
          f"{report.train_seconds:.1f}s, held-out score {report.held_out_score}")
    stats = compute_reference_stats(images, extractor, None)
    rows = []
    for folder in sorted(p for p in (args.outputs / "evaluation").iterdir() if (p / "samples.npz").is_file()):
        fd_digits = json.loads((folder / "metrics.json").read_text()).get("fd_digits")
        with np.load(folder / "samples.npz") as data:
            samples = data["arr_0"]
        fd_learned = evaluate_samples(samples, extractor=extractor, real_stats=stats,
                                      precision_recall_on=False)["fd_learned"]
        rows.append((folder.name, len(samples), fd_digits, fd_learned))
    print("\n| run | samples | fd_digits | fd_learned |\n|---|---:|---:|---:|")
    for name, count, fd_digits, fd_learned in sorted(rows, key=lambda r: r[2]):
        print(f"| {name} | {count} | {fd_digits:.3f} | {fd_learned:.3f} |")
    rho, p = spearmanr([r[2] for r in rows], [r[3] for r in rows])
    print(f"\nSpearman rho (fd_learned vs fd_digits) over {len(rows)} runs: {rho:.3f} (p = {p:.3g})")


def rank_disturbed(args: argparse.Namespace) -> None:
    """Both spaces score the 360 held-out digits, clean and under each disturbance level, against the training
    split: 17 sets of graded quality, a wider spread than a short pipeline run gives."""
    train, test = load_digits("train"), load_digits("test")
    with tempfile.TemporaryDirectory() as tmp:
        train_digits_classifier(train.images, train.labels, seed=args.seed, epochs=args.epochs,
                                out_path=Path(tmp) / "c.safetensors", test_images=test.images, test_labels=test.labels)
        digits = DigitsFeatureExtractor.from_file(Path(tmp) / "c.safetensors")
        report = train_learned_features(train.images, None if args.unlabelled else train.labels, seed=args.seed,
                                        epochs=args.epochs, out_path=Path(tmp) / "l.safetensors")
        learned = LearnedFeatureExtractor.from_file(report.path)
    other = synthetic.shapes(len(test.images), 8, seed=5, channels=1)
    curves = {}
    for extractor in (digits, learned):
        stats = compute_reference_stats(train.images, extractor, None)
        curves[extractor.metric_names.fd] = disturbance_curves(test.images, other, lambda x, e=extractor, s=stats: (
            evaluate_samples(x, extractor=e, real_stats=s, precision_recall_on=False)[e.metric_names.fd]))
    pairs = [(curves["fd_digits"]["mix_in"][0], curves["fd_learned"]["mix_in"][0])]  # the clean set, once
    print(f"learned network: {report.objective}\n\n| set | fd_digits | fd_learned |\n|---|---:|---:|")
    print(f"| clean | {pairs[0][0]:.2f} | {pairs[0][1]:.2f} |")
    for name, levels in LEVELS.items():
        for i, level in enumerate(levels, start=1):
            pair = (curves["fd_digits"][name][i], curves["fd_learned"][name][i])
            pairs.append(pair)
            print(f"| {name} {level:g} | {pair[0]:.2f} | {pair[1]:.2f} |")
    rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    print(f"\nSpearman rho (fd_learned vs fd_digits) over {len(pairs)} held-out sets: {rho:.3f} (p = {p:.3g})")


if __name__ == "__main__":
    main()
