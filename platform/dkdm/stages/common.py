"""The pipeline's file layout and the few helpers every stage shares (all paths relative to the repo root)."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkdm.errors import DkdmError
from dkdm.settings import RunSpec, Settings
from training.distill.config import DistillConfig

if TYPE_CHECKING:  # torch and numpy load only in the stages that run them
    import numpy as np
    import torch

    from dkdm.console import Context
    from training.eval.extractor import FeatureExtractor
    from training.eval.stats import ReferenceStats

OUT = Path("outputs")
DATA_FILE = OUT / "data" / "dataset.npz"
DATA_INFO = OUT / "data" / "info.json"
TEACHER_FILE = OUT / "teacher" / "teacher.safetensors"
FEATURES_DIR = OUT / "features"
CLASSIFIER_FILE = FEATURES_DIR / "classifier.safetensors"
LEARNED_FILE = FEATURES_DIR / "learned.safetensors"
REAL_STATS_FILE = FEATURES_DIR / "real_stats.safetensors"
REFERENCE_DIR = OUT / "reference"
SYNTHETIC_FILE = REFERENCE_DIR / "teacher_samples.safetensors"
TEACHER_STATS_FILE = REFERENCE_DIR / "teacher_stats.safetensors"
REFERENCE_METRICS = REFERENCE_DIR / "metrics.json"
POOL_FILE = OUT / "pool" / "pool.safetensors"
AUTOENCODER_DIR = OUT / "autoencoder"  # the first stage of latent profiles
FIRST_STAGE_FILE = AUTOENCODER_DIR / "first_stage.safetensors"
AUTOENCODER_INFO = AUTOENCODER_DIR / "info.json"
STUDENTS_DIR = OUT / "students"
EVALUATION_DIR = OUT / "evaluation"
REPORT_DIR = OUT / "report"
CURVES_DIR = OUT / "curves"  # loss curves as CSV, for `dvc plots` (outside the model outs, which they describe)
# Resume state lives outside the DVC outs: DVC deletes a stage's outs before rerunning it.
WORK_DIR = Path(".dkdm") / "work"



def run_spec(settings: Settings, run_name: str, allowed: Sequence[str] | None = None) -> RunSpec:
    """The `distill.runs` entry named by `--run`, refused in one line when unknown or of a method the command
    does not train (`dkdm train` takes the baselines, `dkdm distill` the DKDM methods)."""
    runs = settings.distill.runs
    if run_name not in runs:
        raise DkdmError(f"--run: {run_name!r} is not in distill.runs ({', '.join(runs) or 'none defined'})")
    spec = runs[run_name]
    if allowed is not None and spec.method not in allowed:
        raise DkdmError(f"--run: {run_name!r} uses method {spec.method!r}; `dkdm train` runs the baselines "
                        f"({', '.join(allowed)}), use `dkdm distill` for DKDM")
    return spec

def student_dir(run: str) -> Path:
    return STUDENTS_DIR / run


def student_file(run: str) -> Path:
    return student_dir(run) / "student.safetensors"


def evaluation_dir(run: str) -> Path:
    return EVALUATION_DIR / run


def work_dir(name: str) -> Path:
    path = WORK_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    ignore = WORK_DIR.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # the folder ignores itself: resume state never reaches git
    return path


def require(path: Path, made_by: str) -> Path:
    if not path.exists():
        raise DkdmError(f"{path} does not exist; run `{made_by}` first (or `dvc repro`)")
    return path


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Atomic CSV write of `rows` (floats as 6 significant digits, so a float step prints as 500)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: Any) -> Path:
    """Atomic JSON write (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_real_images(settings: Settings) -> tuple[np.ndarray, np.ndarray | None]:
    """The data stage's uint8 NHWC images and labels (None when the dataset has none)."""
    import numpy as np

    require(DATA_FILE, "dkdm data")
    with np.load(DATA_FILE, allow_pickle=False) as data:
        images = data["arr_0"]
        labels = data["arr_1"] if "arr_1" in data.files else None
    return images, labels


def nhwc_to_model(images: np.ndarray) -> torch.Tensor:
    from training.data import to_model_range

    return to_model_range(images)


def make_extractor(settings: Settings, device: torch.device, classifier: Path = CLASSIFIER_FILE,
                   learned: Path = LEARNED_FILE) -> FeatureExtractor:
    """The feature network of the profile: the digits classifier (at `classifier`), the learned network (at
    `learned`), or Inception (weights path from settings)."""
    if settings.features.kind == "digits":
        from training.eval.features import DigitsFeatureExtractor

        require(classifier, "dkdm features")
        return DigitsFeatureExtractor.from_file(classifier, device=device)
    if settings.features.kind == "learned":
        from training.eval.learned import LearnedFeatureExtractor

        return LearnedFeatureExtractor.from_file(require(learned, "dkdm features"), device=device)
    from training.eval.inception import InceptionFeatureExtractor

    return InceptionFeatureExtractor(settings.features.inception_weights, device=device)


def base_distill_config(settings: Settings) -> DistillConfig:
    """The profile's distillation settings as the training side's config of a dynamic run: the pool's part
    (pool_distill_config) plus every trainer setting of distill.train."""
    return pool_distill_config(settings).model_copy(update=settings.distill.train.model_dump())


def pool_distill_config(settings: Settings) -> DistillConfig:
    """Only what preparing a dynamic run's pool reads (rho, batch, seed, precision, the teacher's step and how the
    states are reached), so the pool stage does not depend on the learning rate or the iteration budget; its
    `pool_config()` is the pool."""
    d = settings.distill
    return DistillConfig(method="dynamic", rho=d.rho, batch_size=d.train.batch_size, seed=d.train.seed,
                         precision=d.train.precision, teacher_batch_size=d.teacher_batch_size,
                         pool_dtype=d.pool_dtype, pool_prep=d.pool_prep, clip_denoised=d.clip_denoised)


def periodic_fd_teacher(ctx: Context, config: DistillConfig) -> tuple[FeatureExtractor, ReferenceStats, str]:
    """(extractor, the teacher's D' statistics, the FD' metric name) for a student's periodic evaluation: it is
    scored against D', never against real data, so selecting on it keeps the student data-free."""
    from training.eval.stats import load_reference_stats

    extractor = make_extractor(ctx.settings, ctx.device)
    stats = load_reference_stats(require(TEACHER_STATS_FILE, "dkdm reference"), expected_space=extractor.space)
    name = extractor.metric_names.against_teacher(extractor.metric_names.fd)
    if config.select_metric is not None and config.select_metric != name:
        raise DkdmError(f"distill.train.select_metric: {config.select_metric!r} is not computed here; the "
                        f"periodic metric is {name!r}")
    return extractor, stats, name


def md5_tags(stage_of_student: str | None) -> dict[str, str]:
    """dvc.lock hashes of the teacher (and of a student's stage) for the lineage tags."""
    from dkdm.lineage import locked_md5

    tags = {"dkdm.dvc.teacher_md5": locked_md5("teacher", str(TEACHER_FILE.parent))}
    if stage_of_student:
        tags["dkdm.dvc.student_md5"] = locked_md5(stage_of_student, str(STUDENTS_DIR))
    return {k: v for k, v in tags.items() if v}


def teacher_fingerprint() -> str:
    """sha256 of the teacher weights (from its sidecar): part of every work-folder key that uses the teacher."""
    from training.models import read_checkpoint_meta

    return str(read_checkpoint_meta(require(TEACHER_FILE, "dkdm teacher")).get("provenance", {}).get("sha256", ""))


def keyed_work_dir(name: str, **parts: Any) -> Path:
    import hashlib

    blob = json.dumps(parts, sort_keys=True, default=str)
    return work_dir(f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}")


def clear_work_dir(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
