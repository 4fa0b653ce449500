"""The experiment's work: the shared teacher side (the platform's own stages, run inside the experiment folder),
the teacher's scores with the noise floor at the evaluation's sample count, one student, one evaluation.

Every function expects the working directory to be the experiment folder (the commands change into it), so the
platform's `outputs/...` layout lands in experiments/reproduce/outputs/.
"""
from __future__ import annotations

import csv
import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.reproduce.heldout import HELDOUT_STATS
from dkdm.reproduce.params import ExperimentParams, distill_config, run_name
from dkdm.spaces.pixel import PixelSpace
from dkdm.stages.common import (
    REAL_STATS_FILE,
    SYNTHETIC_FILE,
    TEACHER_FILE,
    load_real_images,
    make_extractor,
    nhwc_to_model,
    read_json,
    require,
    teacher_fingerprint,
    write_csv,
    write_json,
)
from dkdm.tracking import start_run

if TYPE_CHECKING:
    from torch import nn

    from dkdm.settings import Settings
    from training.diffusion import GaussianDiffusion

SHARED_STAGES = ("data", "teacher", "features", "reference", "heldout")
OUT = Path("outputs")
TEACHER_EVAL_DIR = OUT / "teacher_eval"
STUDENTS_DIR = OUT / "students"
EVALUATION_DIR = OUT / "evaluation"
REPORT_DIR = OUT / "report"
CURVE_COLUMNS = ("step", "fd", "fd_teacher")
POOL_WORK_METRIC = "pool_teacher_image_steps"
EXPERIMENT_TAG = {"dkdm.experiment": "reproduce"}


def student_dir(variant: str, seed: int) -> Path:
    return STUDENTS_DIR / run_name(variant, seed)


def evaluation_dir(variant: str, seed: int) -> Path:
    return EVALUATION_DIR / run_name(variant, seed)


def run_shared_stage(ctx: Context, name: str, *, heldout_seed: int) -> None:
    """data / teacher / features / reference: exactly the platform's stage, trained once for the whole grid;
    heldout: the FD' reference drawn apart from D' (dkdm.reproduce.heldout)."""
    if name not in SHARED_STAGES:
        raise DkdmError(f"stage: {name!r} is not one of {', '.join(SHARED_STAGES)}")
    if name == "heldout":
        from dkdm.reproduce.heldout import run_heldout

        run_heldout(ctx, heldout_seed)
        return
    importlib.import_module(f"dkdm.stages.{name}").run(ctx)


def _scorer(ctx: Context):
    from training.eval.stats import load_reference_stats

    extractor = make_extractor(ctx.settings, ctx.device)
    real = load_reference_stats(require(REAL_STATS_FILE, "dkdm reproduce stage features"),
                                expected_space=extractor.space)
    # FD' is scored against the held-out teacher samples, never against D' (the data-free training set).
    teacher = load_reference_stats(require(HELDOUT_STATS, "dkdm reproduce stage heldout"),
                                   expected_space=extractor.space)
    return extractor, real, teacher


def _sample(model: nn.Module, diffusion: Any, ctx: Context, n: int, seed: int):
    from training.eval.sampling import generate_samples

    ev = ctx.settings.evaluate
    return generate_samples(model, diffusion, n, batch_size=ev.batch_size, seed=seed, device=ctx.device,
                            use_ddim=ev.use_ddim, eta=ev.eta, clip_denoised=ev.clip_denoised, progress=False,
                            image_size=ctx.settings.data.image_size, channels=ctx.settings.data.channels)


def _eval_respacing(ctx: Context) -> str:
    ev = ctx.settings.evaluate
    return f"ddim{ev.respacing}" if ev.use_ddim and ev.respacing.isdigit() else ev.respacing


def eval_seed(ctx: Context, seed: int) -> int:
    """Sampling seed of an evaluation: offset by the grid seed, so the intervals include sampling noise too."""
    return ctx.settings.evaluate.seed + 1000 * seed


def teacher_eval(ctx: Context, params: ExperimentParams) -> dict[str, Any]:
    """The teacher scored exactly like a student (same sampler, sample count and seeds), and one noise floor per
    metric at the evaluation's own sample count N = evaluate.num_samples, one per grid seed:
    - FD: N images drawn (with replacement) from the real set, against the real set's statistics: how far a
      perfect model's N samples already lie from the data;
    - FD': the teacher's own N fresh samples against the held-out teacher reference: how far a student that
      matched the teacher exactly would score (the teacher's FD' row, recorded under its floor's name)."""
    import numpy as np

    from training.eval.evaluate import evaluate_features
    from training.eval.sampling import load_sampler

    n = ctx.settings.evaluate.num_samples
    extractor, real, teacher_stats = _scorer(ctx)
    names = extractor.metric_names
    fdp = names.against_teacher(names.fd)
    floor_fd, floor_fdp = names.noise_floor, f"{fdp}_noise_floor"
    real_images, _ = load_real_images(ctx.settings)
    model, diffusion = load_sampler(require(TEACHER_FILE, "dkdm reproduce stage teacher"),
                                    respacing=_eval_respacing(ctx), ema=ctx.settings.evaluate.use_ema,
                                    device=ctx.device)
    per_seed: list[dict[str, float]] = []
    batch = ctx.settings.features.batch_size
    with start_run(ctx.settings, stage="evaluate", run_name="reproduce-teacher", method="teacher",
                   student=ctx.settings.teacher.preset, tags=EXPERIMENT_TAG) as tracker:
        for seed in params.experiment.seeds:
            samples = _sample(model, diffusion, ctx, n, eval_seed(ctx, seed))
            scores = evaluate_features(extractor.extract(samples, batch_size=batch), space=extractor.space,
                                       names=names, real_stats=real, teacher_stats=teacher_stats,
                                       precision_recall_on=False)
            picked = np.random.default_rng(eval_seed(ctx, seed)).integers(0, len(real_images), n)
            drawn = evaluate_features(extractor.extract(real_images[picked], batch_size=batch),
                                      space=extractor.space, names=names, real_stats=real,
                                      teacher_stats=teacher_stats, precision_recall_on=False)
            scores[floor_fd], scores[floor_fdp] = drawn[names.fd], scores[fdp]
            per_seed.append({"seed": seed, **{k: float(v) for k, v in scores.items()}})
            tracker.log_metrics(scores, seed)
        result = {"num_samples": n, "sampling_steps": diffusion.num_timesteps, "metric_fd": names.fd,
                  "metric_fd_teacher": fdp, "metric_noise_floor": floor_fd, "metric_noise_floor_teacher": floor_fdp,
                  "seeds": per_seed}
        write_json(TEACHER_EVAL_DIR / "metrics.json", result)
        tracker.log_artifact(TEACHER_EVAL_DIR / "metrics.json", "evaluation")
    floors = ", ".join(f"{row[floor_fd]:.3f} / {row[floor_fdp]:.3f}" for row in per_seed)
    summary(f"teacher-eval: {n} samples x {len(per_seed)} seeds, noise floors {names.fd} / {fdp}: {floors} "
            f"-> {TEACHER_EVAL_DIR}")
    return result


def make_diffusion(settings: Settings, respacing: str) -> GaussianDiffusion:
    """The profile's (pixel: the reproduction is pixel-only) process, respaced for the curve's sampler."""
    return PixelSpace(settings).process({**settings.diffusion.to_dict(), "timestep_respacing": respacing})


class CurveRecorder:
    """The periodic evaluation: FD and FD' of the EMA student on a fixed sample budget and seed, kept as CSV."""

    def __init__(self, ctx: Context, path: Path) -> None:
        self.ctx = ctx
        self.path = path
        # A resumed run continues its curve: the points before the resume step stay (later ones are redone).
        self.rows: list[dict[str, float]] = []
        if path.is_file():
            with path.open(newline="") as handle:
                self.rows = [{k: int(float(v)) if k == "step" else float(v) for k, v in row.items()}
                             for row in csv.DictReader(handle)]
        self.extractor, self.real, self.teacher = _scorer(ctx)
        self.diffusion = make_diffusion(ctx.settings, _eval_respacing(ctx))
        self.names = self.extractor.metric_names

    def __call__(self, step: int, model: nn.Module) -> dict[str, float]:
        from training.eval.evaluate import evaluate_features

        samples = _sample(model, self.diffusion, self.ctx, self.ctx.settings.distill.eval_samples,
                          self.ctx.settings.evaluate.seed)
        features = self.extractor.extract(samples, batch_size=self.ctx.settings.features.batch_size)
        scores = evaluate_features(features, space=self.extractor.space, names=self.names, real_stats=self.real,
                                   teacher_stats=self.teacher, precision_recall_on=False)
        fd, fd_teacher = scores[self.names.fd], scores[self.names.against_teacher(self.names.fd)]
        self.rows = [row for row in self.rows if row["step"] < step]
        self.rows.append({"step": step, "fd": fd, "fd_teacher": fd_teacher})
        self.write()
        return {self.names.fd: fd, self.names.against_teacher(self.names.fd): fd_teacher}

    def write(self) -> Path:
        return write_csv(self.path, CURVE_COLUMNS, self.rows)


def _method_inputs(ctx: Context, method: str) -> dict[str, Any]:
    from training.distill.config import POOL_METHODS

    if method in POOL_METHODS:
        teacher, _ = PixelSpace(ctx.settings).load_teacher(ctx.device)
        return {"teacher": teacher}  # the pool (dynamic: round(rho*T)*b states) is prepared in memory, seeded
    if method == "data_free":
        from training.distill.baselines import load_synthetic

        return {"synthetic_images": load_synthetic(require(SYNTHETIC_FILE, "dkdm reproduce stage reference"))}
    if method == "data_based":
        images, _ = load_real_images(ctx.settings)
        return {"real_images": nhwc_to_model(images)}
    raise DkdmError(f"method {method!r} is not part of the reproduction (dynamic, shuffled, iterative, data_free, "
                    "data_based)")


def train_one(ctx: Context, params: ExperimentParams, variant: str, seed: int) -> dict[str, Any]:
    """One student of the grid at the shared budget; resumable (the platform's train_network)."""
    from dkdm.stages.training import resume_state_file, train_network

    spec = _spec(params, variant, seed)
    settings = ctx.settings
    config = distill_config(settings, spec, seed)
    preset = settings.distill.student
    folder = student_dir(variant, seed)
    curve = CurveRecorder(ctx, folder / "curve.csv") if config.eval_every else None
    stage = "distill" if spec.method in ("dynamic", "shuffled", "iterative") else "train"
    tags = {**EXPERIMENT_TAG, "dkdm.variant": variant,
            "dkdm.rho": str(config.rho) if spec.method == "dynamic" else None}
    name, identity = f"reproduce-{run_name(variant, seed)}", {"teacher": teacher_fingerprint(), "variant": variant}
    with start_run(settings, stage=stage, run_name=name, method=spec.method, student=preset, tags=tags,
                   resume_state=resume_state_file(settings, name, preset, config, identity)) as tracker:
        started = time.perf_counter()
        result = train_network(
            ctx, PixelSpace(settings), name=name, preset=preset, config=config,
            out_file=folder / "student.safetensors", tracker=tracker, loss_csv=folder / "train_log.csv",
            provenance={"source": "dkdm reproduce", "variant": variant, "method": spec.method, "seed": seed,
                        "teacher": settings.teacher.preset},
            extra_key=identity, eval_fn=curve,
            **_method_inputs(ctx, spec.method),
        )
        # Everything outside the training loop: for a pool method, mostly the pool's preparation.
        setup = time.perf_counter() - started - result["seconds"]
        record = {"variant": variant, "seed": seed, "method": spec.method, "rho": config.rho, "student": preset,
                  "iterations": config.iterations, "steps": result["steps"], "seconds": result["seconds"],
                  "setup_seconds": setup,
                  "train_seconds_per_100_iters": result["train_seconds_per_100_iters"],
                  "best_step": result["best_step"], "run_id": tracker.run_id}
        write_json(folder / "run.json", record)
        tracker.log_artifact(folder / "train_log.csv")
        if curve is not None:
            tracker.log_artifact(curve.path)
    if spec.method in ("dynamic", "shuffled", "iterative"):  # read once the run is closed (its metrics flushed)
        record[POOL_WORK_METRIC] = _logged_metric(settings, record["run_id"], POOL_WORK_METRIC)
        write_json(folder / "run.json", record)
    summary(f"run-one {run_name(variant, seed)}: {preset} by {spec.method}, {result['steps']} steps in "
            f"{result['seconds']:.0f}s -> {folder}")
    return record


def _logged_metric(settings: Settings, run_id: str | None, key: str) -> float | None:
    """A metric the training logged to its MLflow run (None without tracking or without the metric): the pool's
    preparation work is logged there by the pool code, which the reproduction does not reimplement."""
    if not run_id or not settings.tracking.enabled:
        return None
    from mlflow import MlflowClient

    value = MlflowClient(tracking_uri=settings.tracking.uri).get_run(run_id).data.metrics.get(key)
    return None if value is None else float(value)


def evaluate_one(ctx: Context, params: ExperimentParams, variant: str, seed: int) -> dict[str, float]:
    """FD against the data and FD' against the teacher's samples at evaluate.num_samples (EMA weights)."""
    from training.eval.evaluate import evaluate_samples
    from training.eval.sampling import load_sampler

    spec = _spec(params, variant, seed)
    settings = ctx.settings
    checkpoint = require(student_dir(variant, seed) / "student.safetensors",
                         f"dkdm reproduce run-one --variant {variant} --seed {seed}")
    extractor, real, teacher_stats = _scorer(ctx)
    model, diffusion = load_sampler(checkpoint, respacing=_eval_respacing(ctx), ema=settings.evaluate.use_ema,
                                    device=ctx.device)
    n = settings.evaluate.num_samples
    with start_run(settings, stage="evaluate", run_name=f"reproduce-evaluate-{run_name(variant, seed)}",
                   method=spec.method, student=settings.distill.student,
                   tags={**EXPERIMENT_TAG, "dkdm.variant": variant}) as tracker:
        samples = _sample(model, diffusion, ctx, n, eval_seed(ctx, seed))
        metrics = evaluate_samples(samples, extractor=extractor, real_stats=real, teacher_stats=teacher_stats,
                                   batch_size=settings.features.batch_size, seed=eval_seed(ctx, seed))
        metrics = {k: float(v) for k, v in metrics.items()}
        record_file = student_dir(variant, seed) / "run.json"
        if record_file.is_file():
            speed = read_json(record_file).get("train_seconds_per_100_iters")
            if speed is not None:
                metrics["train_seconds_per_100_iters"] = float(speed)
        metrics.update({"num_samples": float(n), "sampling_steps": float(diffusion.num_timesteps)})
        out = evaluation_dir(variant, seed) / "metrics.json"
        write_json(out, dict(sorted(metrics.items())))
        tracker.log_metrics(metrics, 0)
        tracker.log_artifact(out, "evaluation")
    names = extractor.metric_names
    summary(f"evaluate-one {run_name(variant, seed)}: {names.fd} {metrics[names.fd]:.4g}, "
            f"{names.against_teacher(names.fd)} {metrics[names.against_teacher(names.fd)]:.4g} ({n} samples) -> {out}")
    return metrics


def _spec(params: ExperimentParams, variant: str, seed: int):
    exp = params.experiment
    if variant not in exp.variant_specs:
        raise DkdmError(f"--variant: {variant!r} is not in experiment.variant_specs ({', '.join(exp.variant_specs)})")
    if seed not in exp.seeds:
        raise DkdmError(f"--seed: {seed} is not in experiment.seeds {exp.seeds}")
    return exp.variant_specs[variant]
