"""Stage `evaluate@<run>` (and `evaluate_teacher`): sample, score in the profile's feature space, measure costs.

Writes outputs/evaluation/<name>/{samples.npz, grid.png, metrics.json}; metrics.json is what `dvc metrics show`
reads, with the contract's metric and cost names (docs/CONTRACTS.md).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.lineage import locked_md5
from dkdm.spaces import space_for
from dkdm.stages.common import (
    REAL_STATS_FILE,
    STUDENTS_DIR,
    TEACHER_FILE,
    TEACHER_STATS_FILE,
    evaluation_dir,
    make_extractor,
    read_json,
    require,
    student_dir,
    student_file,
    write_json,
)
from dkdm.stages.ranks import job_of, main_run
from dkdm.teacher_compat import check_evaluation
from dkdm.tracking import NullRunTracker, RunTracker, student_model_name
from training.train.distributed import DistContext


@dataclass(frozen=True)
class Target:
    """What one evaluation scores: a run's student, the teacher, or any checkpoint."""

    name: str
    file: Path
    method: str | None
    preset: str | None
    out: Path


def _target(ctx: Context, run: str | None, checkpoint: Path | None, teacher: bool) -> Target:
    settings = ctx.settings
    chosen = sum([run is not None, checkpoint is not None, teacher])
    if chosen != 1:
        raise DkdmError("evaluate: give exactly one of --run NAME, --teacher or --checkpoint PATH")
    if teacher:
        return Target("teacher", require(TEACHER_FILE, "dkdm teacher"), "teacher", settings.teacher.preset,
                      evaluation_dir("teacher"))
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise DkdmError(f"--checkpoint: file {checkpoint} does not exist")
        return Target(checkpoint.stem, checkpoint, None, None, Path("evaluations") / checkpoint.stem)
    runs = settings.distill.runs
    if run not in runs:
        raise DkdmError(f"--run: {run!r} is not in distill.runs ({', '.join(runs) or 'none defined'})")
    return Target(run, require(student_file(run), f"dkdm distill --run {run}"), runs[run].method,
                  settings.distill.student_for(run), evaluation_dir(run))


def _backfill_lineage(ctx: Context, run: str, tracker: RunTracker | NullRunTracker) -> dict[str, str]:
    """The distill stage cannot know its own dvc.lock hash; once it is locked, tag its run and model version."""
    md5 = locked_md5(f"distill@{run}", str(STUDENTS_DIR))
    record = student_dir(run) / "mlflow_run.json"
    if not md5 or not record.is_file() or not ctx.settings.tracking.enabled:
        return {"dkdm.dvc.student_md5": md5} if md5 else {}
    run_id = read_json(record).get("run_id")
    client = getattr(tracker, "client", None)
    if run_id and client is not None:
        try:
            client.set_tag(run_id, "dkdm.dvc.student_md5", md5)
            name = student_model_name(ctx.settings.profile, ctx.settings.distill.runs[run].method)
            for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
                client.set_model_version_tag(name, version.version, "dkdm.dvc.student_md5", md5)
        except Exception:  # noqa: BLE001 - lineage tags are a courtesy; the evaluation itself must go on
            pass
    return {"dkdm.dvc.student_md5": md5}


def _generation_costs(generate: Callable[[int, int], np.ndarray | None], steps: int,
                      device: torch.device) -> dict[str, float]:
    """Wall seconds for 256 samples (decoding included in latent space: it is part of the model's cost); images/s
    too at the paper's 50 steps. One untimed sample first, so one-time costs (CUDA context, kernels) are not counted."""
    from training.eval.costs import GEN_IMAGES, PAPER_STEPS

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generate(1, 0)
    synchronize()
    started = time.perf_counter()
    generate(GEN_IMAGES, 0)
    synchronize()
    seconds = time.perf_counter() - started
    figures = {"gen_seconds_256": seconds}
    if steps == PAPER_STEPS:
        figures["images_per_second_50steps"] = GEN_IMAGES / seconds
    return figures


def run(ctx: Context, *, run: str | None = None, checkpoint: Path | None = None, teacher: bool = False,
        dist: DistContext | None = None) -> None:
    """Under a job of W processes the ranks share the sampling (the same images as one process, in 1/W of the
    time); rank 0 scores them, measures the costs on its own device, writes the files and records the run."""
    from training.eval.costs import device_name, peak_memory_mb, reset_peak_memory
    from training.eval.evaluate import evaluate_samples
    from training.eval.sampling import save_grid, save_samples_npz
    from training.eval.stats import load_reference_stats

    settings = ctx.settings
    ev = settings.evaluate
    target = _target(ctx, run, checkpoint, teacher)
    check_evaluation(settings, target.file, pipeline_file=target.method is not None)  # before any write
    space = space_for(settings)
    job = job_of(ctx, dist)
    device = job.device
    extractor = make_extractor(settings, device)
    real_stats = load_reference_stats(require(REAL_STATS_FILE, "dkdm features"), expected_space=extractor.space)
    teacher_stats = load_reference_stats(require(TEACHER_STATS_FILE, "dkdm reference"), expected_space=extractor.space)
    model, process, _ = space.load_model(target.file, device, ema=ev.use_ema)
    steps = space.sampling_steps(process, ev.respacing, ev.use_ddim)

    def generate(n: int, seed: int, shards: DistContext | None = None) -> np.ndarray | None:
        with torch.no_grad():
            return space.sample(model, process, n, steps=ev.respacing, use_ddim=ev.use_ddim, eta=ev.eta,
                                  clip_denoised=ev.clip_denoised, batch_size=min(ev.batch_size, max(n, 1)),
                                  seed=seed, device=device, progress=ctx.progress_enabled and n > 1, dist=shards)

    out_dir = target.out
    tags = {"dkdm.dvc.teacher_md5": locked_md5("teacher", str(TEACHER_FILE.parent)), "dkdm.run": target.name,
            "dkdm.space": space.name}
    with main_run(ctx.settings, job, stage="evaluate", run_name=f"evaluate-{target.name}", method=target.method,
                  student=target.preset, tags={k: v for k, v in tags.items() if v}) as tracker:
        reset_peak_memory(device)
        samples = generate(ev.num_samples, ev.seed, job)
        peak = peak_memory_mb(device)
        if samples is None:  # ranks other than 0: rank 0 holds every sample
            return
        if run is not None:
            tracker.set_tags(_backfill_lineage(ctx, run, tracker))
        out_dir.mkdir(parents=True, exist_ok=True)
        save_samples_npz(out_dir / "samples.npz", samples)
        grid = save_grid(out_dir / "grid.png", samples[: ev.grid_size], nrow=8,
                         scale=max(1, 64 // settings.data.image_size))
        metrics = evaluate_samples(samples, extractor=extractor, real_stats=real_stats, teacher_stats=teacher_stats,
                                   batch_size=settings.features.batch_size, seed=ev.seed)
        if ev.measure_costs:
            metrics.update(_generation_costs(lambda n, _: generate(n, ev.seed + 1), steps, device))
        metrics["peak_memory_mb"] = peak
        record = student_dir(run) / "mlflow_run.json" if run is not None else None
        if record is not None and record.is_file():
            data = read_json(record)
            for key in ("train_seconds_per_100_iters", "first_stage_encoder_calls", "first_stage_encoded_images"):
                if data.get(key) is not None:
                    metrics[key] = float(data[key])
        metrics["sampling_steps"] = float(steps)
        metrics["num_samples"] = float(ev.num_samples)
        write_json(out_dir / "metrics.json", {k: float(v) for k, v in sorted(metrics.items())})
        write_json(out_dir / "info.json", {"device_name": device_name(device), "checkpoint": str(target.file),
                                           "method": target.method, "preset": target.preset,
                                           "space": space.name, "sampler": "ddim" if ev.use_ddim else "ancestral",
                                           "world_size": job.world_size})
        tracker.set_tags({"device_name": device_name(device)})
        tracker.log_metrics(metrics, 0)
        tracker.log_artifact(grid, "samples")
        tracker.log_artifact(out_dir / "metrics.json", "evaluation")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())
                      if k.startswith(("fd", "fid", "precision", "recall", "is")))
    sampler = f"DDIM {steps} (eta {ev.eta})" if ev.use_ddim else f"{steps} ancestral steps"
    summary(f"evaluate {target.name}: {ev.num_samples} {space.name} samples, {sampler}: {shown} -> "
            f"{out_dir / 'metrics.json'}")
