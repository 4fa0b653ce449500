"""Does `fd_learned` rank models as `fd_digits` does? Rescore a finished digits pipeline run in the learned space.

Reads an `outputs/` folder of a digits profile (`dvc repro` of `default` or `ci`): the frozen training images,
each evaluated run's samples and its `fd_digits`. Trains the learned feature network on those images (as the
`features` stage would with `features.kind: learned`), scores every run's samples in it, and prints both scores
per run and Spearman's rank correlation between them.

    python benchmarks/fd_learned_vs_digits.py --outputs outputs --epochs 30
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from training.eval import compute_reference_stats, evaluate_samples
from training.eval.learned import LearnedFeatureExtractor
from training.eval.learned_train import train_learned_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unlabelled", action="store_true", help="ignore the labels: the contrastive network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    print(f"\n| run | samples | fd_digits | fd_learned |\n|---|---:|---:|---:|")
    for name, count, fd_digits, fd_learned in sorted(rows, key=lambda r: r[2]):
        print(f"| {name} | {count} | {fd_digits:.3f} | {fd_learned:.3f} |")
    rho, p = spearmanr([r[2] for r in rows], [r[3] for r in rows])
    print(f"\nSpearman rho (fd_learned vs fd_digits) over {len(rows)} runs: {rho:.3f} (p = {p:.3g})")


if __name__ == "__main__":
    main()
