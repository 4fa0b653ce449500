"""The reproduction experiment's definition (experiments/reproduce/params.yaml) and the dkdm settings it implies.

The file has three parts: `base_profile` (a dkdm profile file: dataset, teacher, diffusion, feature space,
sampler, tracking), `settings` (deep-merged over that profile: the shared budget of every student, the
evaluation sample count), and `experiment` (the grid: variants x seeds, and the verdict rule's alpha).
Switching to paper scale is switching this file (`dkdm reproduce use cifar10`), never the code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dkdm.errors import DkdmError, one_line
from dkdm.settings import Settings, load_settings
from dkdm.yaml_files import load_yaml
from training.distill.config import DATASET_METHODS, DistillConfig, Method
from training.train.config import TrainConfig

PARAMS_FILE = "params.yaml"
PARAMS_VARIANT = "params-{name}.yaml"

class Variant(BaseModel):
    """One kind of student: a method, for the dynamic pool its rho (None = settings.distill.rho), and any settings
    of its own (deep-merged over the experiment's for its run-one and evaluate-one: e.g. another student
    architecture, or another pool preparation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    rho: float | None = Field(None, gt=0)
    label: str | None = Field(None, description="name in the report (default: the variant's key)")
    settings: dict[str, Any] = Field(default_factory=dict, description="deep-merged over `settings` for this variant")

    @model_validator(mode="after")
    def _rho_for_dynamic(self) -> Variant:
        if self.rho is not None and self.method != "dynamic":
            raise ValueError(f"rho only applies to method 'dynamic', not {self.method!r}")
        return self


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: list[int] = Field(min_length=1)
    variants: list[str] = Field(min_length=1, description="the grid's variant names (DVC's matrix iterates it)")
    variant_specs: dict[str, Variant]
    rho_sweep: list[str] = Field(default_factory=list, description="dynamic variants of the rho claim")
    alpha: float = Field(0.05, gt=0, lt=1, description="two-sided level of the Welch t-test and the intervals")
    flat_tolerance: float = Field(0.1, gt=0, description="curve counts as flat if the last quarter moves less")
    note: str | None = Field(None, description="printed at the top of the report (e.g. a reduced budget)")
    heldout_seed: int = Field(1000, ge=0, description="seed of the FD' reference set (D' keeps reference.seed)")
    budgets: list[float] = Field([0.125, 0.25, 0.5, 1.0], min_length=1,
                                 description="fractions of the iteration budget the verdicts compare at")
    bootstrap: int = Field(10000, ge=100, description="resamples of the student/teacher FD' ratio interval")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _known_variants(self) -> Experiment:
        for name in [*self.variants, *self.rho_sweep]:
            if name not in self.variant_specs:
                raise ValueError(f"variant {name!r} has no entry in experiment.variant_specs")
            if not name or any(ch in name for ch in "/\\ @.:"):
                raise ValueError(f"variant name {name!r} must be non-empty without '/', '\\', ' ', '@', '.', ':'")
        for name in self.rho_sweep:
            if self.variant_specs[name].method != "dynamic":
                raise ValueError(f"rho_sweep: {name!r} is not a dynamic variant")
        return self

    @field_validator("budgets")
    @classmethod
    def _fractions(cls, budgets: list[float]) -> list[float]:
        if any(not 0 < b <= 1 for b in budgets) or sorted(set(budgets)) != budgets:
            raise ValueError(f"budgets must be increasing fractions in (0, 1], got {budgets}")
        return budgets

    def label(self, variant: str) -> str:
        return self.variant_specs[variant].label or variant


class ExperimentParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_profile: str = Field(description="dkdm profile file (relative to the experiment folder) or a name")
    settings: dict[str, Any] = Field(default_factory=dict, description="deep-merged over the base profile")
    experiment: Experiment


def read_params(experiment_dir: Path, params_file: str = PARAMS_FILE) -> ExperimentParams:
    path = experiment_dir / params_file
    if not path.is_file():
        raise DkdmError(f"{path} does not exist; is {experiment_dir} the experiment folder (experiments/reproduce)?")
    data = load_yaml(path) or {}
    try:
        return ExperimentParams.model_validate(data)
    except ValidationError as err:
        raise DkdmError(f"{path}: {one_line(err)}") from None


def base_profile_file(params: ExperimentParams, experiment_dir: Path) -> Path:
    from dkdm import profiles

    candidate = experiment_dir / params.base_profile
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise DkdmError(f"base_profile: file {candidate} does not exist")
        return candidate
    return profiles.resolve(params.base_profile)


def repo_root(start: Path) -> Path | None:
    """The repository `start` lies in: the git work tree, else the outermost DVC project. The experiment folder is
    a DVC project of its own (a subrepo, so the root's `dvc status` skips it): the nearest `.dvc/` is not the root."""
    folders = (start.resolve(), *start.resolve().parents)
    git = next((folder for folder in folders if (folder / ".git").exists()), None)
    return git or next((folder for folder in reversed(folders) if (folder / ".dvc").is_dir()), None)


def _repo_root(start: Path) -> Path:
    return repo_root(start) or start.resolve()


def _tracking_override(params: ExperimentParams, experiment_dir: Path) -> dict[str, Any]:
    """Runs go to the repository's store (what `mlflow ui` and the dashboard read), not one in the experiment
    folder: a relative SQLite URI is resolved against the repository root. An explicit DKDM_TRACKING__URI wins."""
    if os.environ.get("DKDM_TRACKING__URI"):
        return {"uri": os.environ["DKDM_TRACKING__URI"]}
    uri = str(params.settings.get("tracking", {}).get("uri", "sqlite:///mlflow.db"))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = f"sqlite:///{_repo_root(experiment_dir) / uri.removeprefix('sqlite:///')}"
    return {"uri": uri}


def ensure_tracking_experiment(settings: Settings, experiment_dir: Path) -> None:
    """With a local store, create the MLflow experiment (if new) with its artifacts at the repository root.

    The commands work inside the experiment folder, and MLflow puts a new experiment's artifact root in the
    working directory (./mlruns): without this, the first command would fix every later run's artifacts there."""
    tracking = settings.tracking
    if not tracking.enabled or not tracking.uri.startswith("sqlite:///"):
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking.uri)
    if client.get_experiment_by_name(tracking.experiment) is None:
        try:
            client.create_experiment(tracking.experiment,
                                     artifact_location=(_repo_root(experiment_dir) / "mlruns").as_uri())
        except MlflowException:  # created meanwhile by a concurrent command: its location stands
            pass


def experiment_settings(params: ExperimentParams, experiment_dir: Path, variant: str | None = None,
                        **extra: Any) -> Settings:
    """The base profile + `settings` + the variant's own settings + `extra` (e.g. seed), validated once; tracking
    goes to the repo's store."""
    spec = params.experiment.variant_specs.get(variant) if variant is not None else None
    overrides = _merge(_merge(params.settings, spec.settings if spec is not None else {}), extra)
    overrides = _merge(overrides, {"tracking": _tracking_override(params, experiment_dir)})
    return load_settings(base_profile_file(params, experiment_dir), overrides)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


_READ_ELSEWHERE = {"student", "train", "eval_samples"}  # the student preset, the budget, the curve's sample count


def distill_config(settings: Settings, variant: Variant, seed: int) -> DistillConfig:
    """Every student of the grid shares settings.distill.train (the equal iteration budget); only the method,
    the seed, for the rho sweep the pool size, and what a variant's own settings change differ. Every other field
    that settings.distill and the config share passes through (e.g. a pool-preparation setting), so a variant
    overriding it reaches the pool it trains from."""
    d = settings.distill
    # A variant's distill override that the trainer's config cannot carry would silently train the experiment's
    # default (e.g. a pool-preparation setting read only by the pool stage): refuse it instead.
    unreached = set(variant.settings.get("distill", {})) - set(DistillConfig.model_fields) - _READ_ELSEWHERE
    if unreached:
        raise DkdmError(f"variant settings: distill.{', '.join(sorted(unreached))} does not reach the training config "
                        "of a reproduction run (DistillConfig has no such field)")
    shared = (set(DistillConfig.model_fields) & set(type(d).model_fields)) - set(TrainConfig.model_fields) - {"rho"}
    return DistillConfig(
        **{**d.train.model_dump(), "seed": seed},
        **{name: getattr(d, name) for name in sorted(shared)},
        method=variant.method,
        rho=variant.rho if variant.rho is not None else d.rho,
        random_flip=settings.data.random_flip and variant.method in DATASET_METHODS,
    )


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"
