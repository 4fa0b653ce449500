"""Stage `distill@<run>`: one student of distill.runs, by DKDM (dynamic / shuffled / iterative, the teacher in the
loop, the paper's Sec. 3.3) or by a baseline (data_free / data_limited / data_based, ordinary training on a
set, Table 4), in the
profile's space.

The student is written to outputs/students/<run>/ (safetensors + JSON sidecar, EMA weights by default) and
registered in the MLflow model registry as `dkdm-student-<profile>-<method>`. In latent space the first stage is
loaded with counters on its encoder and decoder: the encoder count (zero for every DKDM method and for data_free,
why DKDM trains faster there, supplementary §10) goes to the run record, MLflow and the evaluation's metrics.json.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dkdm.console import Context, summary
from dkdm.errors import DkdmError
from dkdm.spaces import Space, SpaceSampler, space_for
from dkdm.stages.common import (
    CURVES_DIR,
    POOL_FILE,
    SYNTHETIC_FILE,
    load_real_images,
    md5_tags,
    periodic_fd_teacher,
    require,
    run_spec,
    student_dir,
    student_file,
    teacher_fingerprint,
    write_json,
)
from dkdm.stages.ranks import main_run
from dkdm.stages.training import report_weights, resume_state_file, train_network
from dkdm.teacher_compat import check_teacher_compat
from dkdm.tracking import student_model_name
from training.distill.config import DistillConfig
from training.train.distributed import DistContext
from training.train.trainer import EvalFn

RUN_RECORD = "mlflow_run.json"


class CallCounter:
    """Counts forward calls and images through a module (forward hook): the proof that distillation never encodes."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.images = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, inputs: tuple[Tensor, ...], _output: Any) -> None:
        self.calls += 1
        self.images += int(inputs[0].shape[0])

    def remove(self) -> None:
        self._handle.remove()


def _inputs(ctx: Context, space: Space, config: DistillConfig,
            world_size: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher-made source of `config.method` as train_network arguments, and what identifies it (resume key)."""
    from training.distill.config import POOL_METHODS

    settings = ctx.settings
    method = config.method
    kwargs: dict[str, Any] = {}
    identity: dict[str, Any] = {"teacher": teacher_fingerprint()}
    if method in POOL_METHODS:
        kwargs["teacher"], _ = space.load_teacher(ctx.device)
        if method == "dynamic":
            from training.distill.pool import check_pool_world, read_pool_meta

            meta = read_pool_meta(require(POOL_FILE, "dkdm prepare-pool"))
            if tuple(meta["settings"]["image_shape"]) != space.model_shape():
                raise DkdmError(f"{POOL_FILE} holds {tuple(meta['settings']['image_shape'])} entries, not the "
                                f"{space.name} model inputs {space.model_shape()}; rerun `dkdm prepare-pool`")
            check_pool_world(POOL_FILE, meta, world_size)  # before the run starts: nothing half-written
            kwargs["pool_path"] = POOL_FILE
            identity["pool"] = meta.get("settings")
        return kwargs, identity
    if method in ("data_free", "data_limited"):
        from training.distill.baselines import load_synthetic, read_synthetic_meta

        kwargs["synthetic_images"] = load_synthetic(require(SYNTHETIC_FILE, "dkdm reference"))
        identity["synthetic"] = read_synthetic_meta(SYNTHETIC_FILE).get("settings")
    if method in ("data_limited", "data_based"):
        images, _ = load_real_images(settings)
        kwargs["real_images"] = space.training_images(images)
        kwargs["encode"] = space.encoder(ctx.device, config.precision)
        identity["real_count"] = len(images)
    return kwargs, identity


def early_stop_metric(ctx: Context, space: Space, config: DistillConfig) -> EvalFn | None:
    """FD' of the EMA student every eval_every steps: `distill.eval_samples` samples drawn with the evaluation's
    sampler (same seed each time) against the teacher's D' statistics, never real data, so selection keeps the
    student data-free; None when the run does not evaluate periodically."""
    if not config.eval_every:
        return None
    from training.eval.early_stop import make_fd_metric

    settings = ctx.settings
    ev = settings.evaluate
    extractor, stats, name = periodic_fd_teacher(ctx, config)
    sampler = SpaceSampler(space, space.process(None, ctx.device), steps=ev.respacing, use_ddim=ev.use_ddim,
                           eta=ev.eta, clip_denoised=ev.clip_denoised)
    return make_fd_metric(extractor, stats, sampler, n_samples=settings.distill.eval_samples,
                          batch_size=ev.batch_size, seed=ev.seed, device=ctx.device, metric_name=name)


def run(ctx: Context, run_name: str, *, allowed: tuple[str, ...] | None, dist: DistContext | None = None) -> None:
    """Train the student of `run_name`; under a job of W processes (`dist`) one DDP student, one MLflow run,
    one checkpoint, written by rank 0."""
    from training.distill.config import POOL_METHODS

    check_teacher_compat(ctx.settings)  # before anything is written: a teacher of another T refused in one line

    settings = ctx.settings
    space = space_for(settings)
    spec = run_spec(settings, run_name, allowed)
    preset = settings.distill.student_for(run_name)
    config = settings.distill.config_for(run_name, random_flip=settings.data.random_flip)
    eval_fn = early_stop_metric(ctx, space, config)  # built before the counters: it decodes, it never encodes
    first_stage = space.first_stage(ctx.device)
    counters = {} if first_stage is None else {"encoder": CallCounter(first_stage.encoder),
                                               "decoder": CallCounter(first_stage.decoder)}
    kwargs, identity = _inputs(ctx, space, config, dist.world_size if dist is not None else 1)
    out_file = student_file(run_name)
    stage = "distill" if spec.method in POOL_METHODS else "train"
    with main_run(settings, dist, stage=stage, run_name=f"{run_name}-{preset}", method=spec.method, student=preset,
                 tags={**md5_tags(None), "dkdm.run": run_name, "dkdm.space": space.name},
                 resume_state=resume_state_file(settings, f"student-{run_name}", preset, config,
                                                identity)) as tracker:
        result = train_network(
            ctx, space, name=f"student-{run_name}", preset=preset, config=config, out_file=out_file, tracker=tracker,
            loss_csv=CURVES_DIR / f"{run_name}.csv", extra_key=identity, dist=dist,
            provenance={"source": f"dkdm {stage}", "profile": settings.profile, "run": run_name,
                        "method": spec.method, "teacher": settings.teacher.preset},
            eval_fn=eval_fn, **kwargs,
        )
        report_weights(tracker, dist, result["weights_sha256"])
        if dist is not None and not dist.is_main:
            return
        # Counted over the whole stage (sources built above included): the data-limited set is encoded once,
        # data-based training encodes every batch, everything else never touches the encoder.
        counts = {}
        if counters:
            counts = {"first_stage_encoder_calls": counters["encoder"].calls,
                      "first_stage_encoded_images": counters["encoder"].images,
                      "first_stage_decoder_calls": counters["decoder"].calls}
        final = {k: float(result[k]) for k in ("train_seconds_per_100_iters", "skipped_steps") if result[k] is not None}
        tracker.log_metrics({**final, **{k: float(v) for k, v in counts.items()}}, result["steps"])
        tracker.log_artifact(CURVES_DIR / f"{run_name}.csv")
        if settings.tracking.register_students:
            tracker.register_model(
                student_model_name(settings.profile, spec.method), [out_file, out_file.with_suffix(".json")],
                tags={"dkdm.run": run_name, "dkdm.student": preset, "dkdm.method": spec.method,
                      "dkdm.profile": settings.profile, "format": "safetensors", "dkdm.space": space.name},
                description=f"{space.name} {preset} by {spec.method} from {settings.teacher.preset} "
                            f"({settings.profile})",
            )
        write_json(student_dir(run_name) / RUN_RECORD, {
            "run_id": tracker.run_id, "steps": result["steps"], "seconds": result["seconds"],
            "train_seconds_per_100_iters": result["train_seconds_per_100_iters"],
            "best_step": result["best_step"], "stopped_early": result["stopped_early"],
            "world_size": result["world_size"], "batch_size_global": result["batch_size_global"], **counts})
    for counter in counters.values():
        counter.remove()
    loss = f", final loss {result['final_loss']:.4f}" if result["final_loss"] is not None else ""
    encoded = f", first-stage encoder calls {counts['first_stage_encoder_calls']}" if counts else ""
    summary(f"{stage} {run_name}: {space.name} {preset} by {spec.method}, {result['steps']} steps in "
            f"{result['seconds']:.0f}s{loss}{encoded} -> {out_file}")
