"""What a study needs from the pipeline (teacher, feature network, FD' reference), found and loaded once.

A study scores students against the teacher's own samples (FD'/FID', the paper's D'), so it runs after
`dvc repro` has produced the teacher, the feature space and the reference statistics (or after
`dvc repro reference`). Each can be pointed elsewhere with a CLI flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dkdm.errors import DkdmError
from dkdm.settings import Settings
from dkdm.stages.common import (
    CLASSIFIER_FILE,
    LEARNED_FILE,
    TEACHER_FILE,
    TEACHER_STATS_FILE,
    base_distill_config,
    make_extractor,
)
from dkdm.teacher_compat import check_teacher_compat
from dkdm.tuning.config import TuneSettings
from dkdm.tuning.objective import TrialBudget, TuneInputs

__all__ = ["InputPaths", "base_distill_config", "budget_for", "check_paths", "default_method", "load_inputs",
           "num_timesteps"]


@dataclass(frozen=True)
class InputPaths:
    teacher: Path = TEACHER_FILE
    teacher_stats: Path = TEACHER_STATS_FILE
    classifier: Path = CLASSIFIER_FILE
    learned: Path = LEARNED_FILE

    def with_overrides(self, **values: Path | None) -> InputPaths:
        keys = ("teacher", "teacher_stats", "classifier", "learned")
        return InputPaths(**{k: (values.get(k) or getattr(self, k)) for k in keys})


def check_paths(settings: Settings, paths: InputPaths) -> None:
    """Every missing input as one line, before any work."""
    needed = [("teacher", paths.teacher), ("teacher_stats", paths.teacher_stats)]
    if settings.features.kind == "digits":
        needed.append(("classifier", paths.classifier))
    if settings.features.kind == "learned":
        needed.append(("learned", paths.learned))
    for name, path in needed:
        if not Path(path).is_file():
            raise DkdmError(f"tune: {name} file {path} does not exist; run `dvc repro reference` first "
                            f"(or pass --{name.replace('_', '-')})")


def budget_for(settings: Settings, tune: TuneSettings) -> TrialBudget:
    iterations = tune.iterations or settings.distill.train.iterations
    eval_every = tune.eval_every or max(1, iterations // 4)
    if eval_every > iterations:
        raise DkdmError(f"tune.eval_every: {eval_every} exceeds the trial budget of {iterations} iterations")
    return TrialBudget(iterations=iterations, eval_every=eval_every, eval_samples=tune.eval_samples,
                       final_samples=tune.final_samples, eval_batch_size=tune.eval_batch_size,
                       eval_seed=tune.eval_seed, max_skipped_fraction=tune.max_skipped_fraction)


def default_method(settings: Settings) -> str:
    """The profile's DKDM method: the first pool-based run of distill.runs (dynamic when there is none)."""
    from training.distill.config import POOL_METHODS

    for spec in settings.distill.runs.values():
        if spec.method in POOL_METHODS:
            return spec.method
    return "dynamic"


def num_timesteps(settings: Settings) -> int:
    from training.diffusion.respace import space_timesteps

    cfg = settings.diffusion
    return len(space_timesteps(cfg.steps, cfg.timestep_respacing)) if cfg.timestep_respacing else cfg.steps


def load_inputs(settings: Settings, tune: TuneSettings, paths: InputPaths, device: torch.device) -> TuneInputs:
    """The profile's space decides what the networks see (images, or a first stage's latents) and how a trial's
    student is sampled for FD' (the evaluation's sampler, decoded in latent space)."""
    from dkdm.spaces import SpaceSampler, space_for
    from training.eval import load_reference_stats

    check_paths(settings, paths)
    check_teacher_compat(settings, paths.teacher)
    space = space_for(settings)
    teacher, _, _ = space.load_model(paths.teacher, device)
    # Teacher and student walk the profile's process (settings checked the pair); build_run re-checks pixel ones.
    diffusion = space.diffusion_config()
    process = space.process(diffusion, device)
    ev = settings.evaluate
    respacing = ev.respacing if tune.eval_respacing is None else tune.eval_respacing
    sampler = SpaceSampler(space, process, steps=respacing, use_ddim=ev.use_ddim, eta=ev.eta,
                           clip_denoised=ev.clip_denoised)
    extractor = make_extractor(settings, device, paths.classifier, paths.learned)
    stats = load_reference_stats(paths.teacher_stats, expected_space=extractor.space)
    metric = extractor.metric_names.against_teacher(extractor.metric_names.fd)
    return TuneInputs(
        teacher=teacher, teacher_diffusion=process, student_diffusion=process, eval_diffusion=sampler,
        diffusion_config=dict(diffusion), extractor=extractor, teacher_stats=stats, image_shape=space.model_shape(),
        metric=metric, student_preset=settings.distill.student, base_config=base_distill_config(settings),
        device=device,
    )

