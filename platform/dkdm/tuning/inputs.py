"""What a study needs from the pipeline (teacher, feature network, FD' reference), found and loaded once.

A study scores students against the teacher's own samples (FD'/FID', the paper's D'), so it runs after
`dvc repro` has produced the teacher, the feature space and the reference statistics (or after
`dvc repro reference`). Each can be pointed elsewhere with a CLI flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dkdm.errors import DkdmError
from dkdm.stages.common import CLASSIFIER_FILE, TEACHER_FILE, TEACHER_STATS_FILE
from dkdm.tuning.config import TuneSettings
from dkdm.tuning.objective import TrialBudget, TuneInputs


@dataclass(frozen=True)
class InputPaths:
    teacher: Path = TEACHER_FILE
    teacher_stats: Path = TEACHER_STATS_FILE
    classifier: Path = CLASSIFIER_FILE

    def with_overrides(self, **values: Path | None) -> InputPaths:
        return InputPaths(**{k: (values.get(k) or getattr(self, k)) for k in ("teacher", "teacher_stats", "classifier")})


def check_paths(settings: Any, paths: InputPaths) -> None:
    """Every missing input as one line, before any work."""
    needed = [("teacher", paths.teacher), ("teacher_stats", paths.teacher_stats)]
    if settings.features.kind == "digits":
        needed.append(("classifier", paths.classifier))
    for name, path in needed:
        if not Path(path).is_file():
            raise DkdmError(f"tune: {name} file {path} does not exist; run `dvc repro reference` first "
                            f"(or pass --{name.replace('_', '-')})")


def budget_for(settings: Any, tune: TuneSettings) -> TrialBudget:
    iterations = tune.iterations or settings.distill.train.iterations
    eval_every = tune.eval_every or max(1, iterations // 4)
    if eval_every > iterations:
        raise DkdmError(f"tune.eval_every: {eval_every} exceeds the trial budget of {iterations} iterations")
    return TrialBudget(iterations=iterations, eval_every=eval_every, eval_samples=tune.eval_samples,
                       final_samples=tune.final_samples, eval_batch_size=tune.eval_batch_size,
                       eval_seed=tune.eval_seed, max_skipped_fraction=tune.max_skipped_fraction)


def base_distill_config(settings: Any) -> Any:
    from training.distill.config import DistillConfig

    d = settings.distill
    return DistillConfig(**d.train.model_dump(), method="dynamic", rho=d.rho, teacher_batch_size=d.teacher_batch_size,
                         pool_dtype=d.pool_dtype, clip_denoised=d.clip_denoised)


def default_method(settings: Any) -> str:
    """The profile's DKDM method: the first pool-based run of distill.runs (dynamic when there is none)."""
    from training.distill.config import POOL_METHODS

    for spec in settings.distill.runs.values():
        if spec.method in POOL_METHODS:
            return spec.method
    return "dynamic"


def num_timesteps(settings: Any) -> int:
    from training.diffusion.respace import space_timesteps

    cfg = settings.diffusion
    return len(space_timesteps(cfg.steps, cfg.timestep_respacing)) if cfg.timestep_respacing else cfg.steps


def load_inputs(settings: Any, tune: TuneSettings, paths: InputPaths, device: torch.device) -> TuneInputs:
    from training.diffusion import create_diffusion
    from training.eval import load_reference_stats
    from training.models import load_checkpoint

    check_paths(settings, paths)
    teacher, _ = load_checkpoint(paths.teacher, ema=True, device=device)
    diffusion = settings.diffusion.to_dict()
    # Teacher and student walk the same process (settings checked the pair); build_run re-checks it.
    student_diffusion = create_diffusion(**diffusion)
    teacher_diffusion = create_diffusion(**diffusion)
    respacing = settings.evaluate.respacing if tune.eval_respacing is None else tune.eval_respacing
    eval_diffusion = create_diffusion(**{**diffusion, "timestep_respacing": respacing})
    if settings.features.kind == "digits":
        from training.eval import DigitsFeatureExtractor

        extractor = DigitsFeatureExtractor.from_file(paths.classifier, device=device)
    else:
        from training.eval import InceptionFeatureExtractor

        extractor = InceptionFeatureExtractor(settings.features.inception_weights, device=device)
    stats = load_reference_stats(paths.teacher_stats, expected_space=extractor.space)
    metric = extractor.metric_names.against_teacher(extractor.metric_names.fd)
    shape = (settings.data.channels, settings.data.image_size, settings.data.image_size)
    return TuneInputs(
        teacher=teacher, teacher_diffusion=teacher_diffusion, student_diffusion=student_diffusion,
        eval_diffusion=eval_diffusion, diffusion_config=dict(diffusion), extractor=extractor,
        teacher_stats=stats, image_shape=shape, metric=metric, student_preset=settings.distill.student,
        base_config=base_distill_config(settings), device=device,
    )
