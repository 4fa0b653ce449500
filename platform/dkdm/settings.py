"""Typed, validated settings of one profile: every section of params.yaml / configs/<profile>.yaml.

Precedence (highest first): explicit overrides from the CLI, environment variables `DKDM_<SECTION>__<KEY>`,
a `.env` file in the working directory, the profile YAML, the defaults below. The training-side models
(`TrainConfig`, `DistillConfig`, `DiffusionConfig`) are embedded, not redefined, so their validation applies
here unchanged; `load_settings` turns any problem into one `DkdmError` line naming the field and the value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from dkdm.architectures import ArchSpec
from dkdm.errors import DkdmError, one_line
from dkdm.settings_latent import LatentSettings
from dkdm.settings_pipeline import PipelineSettings, check_pipeline, with_pipeline_defaults
from dkdm.tuning.config import TuneSettings
from dkdm.yaml_files import load_mapping
from training.diffusion.config import DiffusionConfig
from training.distill.config import DATASET_METHODS, POOL_METHODS, DistillConfig, Method, PoolDType, PoolPrep
from training.train.config import TrainConfig

DATASETS = ("digits", "cifar10", "celeba64", "imagenet32", "folder", "npz")
# Which DVC out each method trains from; a run's `source` must name it so dvc.yaml can depend on it.
METHOD_SOURCES: dict[str, str] = {
    "dynamic": "outputs/pool",
    "shuffled": "outputs/teacher",
    "iterative": "outputs/teacher",
    "data_free": "outputs/reference",
    "data_limited": "outputs/reference",
    "data_based": "outputs/data",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class RuntimeSettings(Section):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (None = torch's default)")
    progress: bool = Field(True, description="rich progress bars on long work")
    # One job over many processes (dkdm.launch): a command whose profile asks for more than one process launches
    # itself through torch's elastic launcher, as `torchrun` would; under a torchrun the user typed, torchrun wins.
    nproc_per_node: int = Field(1, ge=1, description="processes per node (one per GPU); > 1 launches via torchrun")
    nnodes: int = Field(1, ge=1, description="nodes of the job; > 1 needs rdzv_endpoint")
    rdzv_endpoint: str | None = Field(None, description="host:port of the c10d rendezvous (multi-node jobs)")
    rdzv_id: str = Field("dkdm", min_length=1, description="rendezvous id shared by every node of one job")
    max_restarts: int = Field(0, ge=0, description="elastic restarts of the whole job after a rank fails")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @model_validator(mode="after")
    def _rendezvous(self) -> RuntimeSettings:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"runtime.nnodes is {self.nnodes}: set runtime.rdzv_endpoint (host:port) for the nodes "
                             "to meet")
        return self

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class DataSettings(Section):
    dataset: str = Field("digits", description="digits | cifar10 | celeba64 | imagenet32 | folder | npz")
    path: Path | None = Field(None, description="root of a named dataset's files, or the folder / .npz")
    split: str = "train"
    image_size: int = Field(8, gt=0)
    channels: Literal[1, 3] = 1
    limit: int | None = Field(None, gt=0, description="use only the first N images (smoke tests)")
    random_flip: bool = Field(False, description="baselines trained on images (data_free / data_limited / "
                              "data_based) mirror each one left-right with p = 1/2 per step, as the official code; "
                              "DKDM never (its sources hold no images); never for digits")

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; expected one of {', '.join(DATASETS)}")
        return value

    @model_validator(mode="after")
    def _path_needed(self) -> DataSettings:
        if self.dataset != "digits" and self.path is None:
            raise ValueError(f"path: dataset {self.dataset!r} needs data.path (its files are never downloaded)")
        if self.random_flip and self.dataset == "digits":
            raise ValueError("random_flip: a mirrored digit is another glyph; digits are never flipped")
        return self


class TeacherSettings(Section):
    source: Literal["train", "import"] = Field("train", description="train in the pipeline, or import a .pt")
    preset: ArchSpec = Field("digits-teacher", description="preset name or inline {family: ..., <config keys>}")
    checkpoint: Path | None = Field(None, description="foreign ADM / DDPM-IP .pt (source: import)")
    latent: LatentSettings | None = Field(None, description="latent profiles: the LDM process and first stage")
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _checkpoint_for_import(self) -> TeacherSettings:
        if self.source == "import" and self.checkpoint is None:
            raise ValueError("checkpoint: source 'import' needs teacher.checkpoint (a .pt file)")
        return self


class FeaturesSettings(Section):
    kind: Literal["digits", "learned", "inception"] = Field(
        "digits", description="feature space of every metric: digits (8x8 digits only), learned (a network trained "
        "on the data, any shape, offline; the default for data other than digits), inception (FID, needs weights)")
    inception_weights: Path | None = Field(None, description="FID Inception weights file (kind: inception)")
    classifier_epochs: int = Field(30, gt=0, description="training epochs of the feature network (digits, learned)")
    classifier_batch_size: int = Field(128, gt=0)
    classifier_lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(512, gt=0, description="feature extraction batch")
    seed: int = Field(0, ge=0)


class ReferenceSettings(Section):
    """Teacher samples: D' for FD'/FID', the noise floor, and the data-free baselines' synthetic set."""

    num_samples: int | None = Field(None, gt=1, description="None = the size of the real training set")
    respacing: str = Field("", description="teacher sampling steps ('' = all T), as the paper's Table 4")
    batch_size: int = Field(256, gt=0)
    seed: int = Field(1, ge=0)
    heldout_seed: int | None = Field(
        None, ge=0, description="FD'/FID' reference: a second teacher set of D''s size drawn with this seed, so the "
        "data-free baselines (trained on D') are not scored against their own training data; None = against D'")

    @model_validator(mode="after")
    def _heldout_apart(self) -> ReferenceSettings:
        if self.heldout_seed is not None and self.heldout_seed == self.seed:
            raise ValueError(f"heldout_seed: {self.heldout_seed} is also D''s seed; the held-out set must be "
                             "drawn with another seed")
        return self


class RunSpec(Section):
    """One student to produce: a method, the student preset and the DVC out it trains from."""

    method: Method
    source: str
    student: ArchSpec | None = Field(None, description="preset or inline architecture; None = distill.student")
    discard_prob: float = Field(0.0, ge=0, lt=1)
    data_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _source_matches(self) -> RunSpec:
        expected = METHOD_SOURCES[self.method]
        if self.source != expected:
            raise ValueError(f"source: method {self.method!r} trains from {expected!r}, not {self.source!r}")
        return self


class DistillSettings(Section):
    student: ArchSpec = Field("digits-student", description="preset name or inline {family: ..., <config keys>}")
    rho: float = Field(0.4, gt=0, description="dynamic pool size = round(rho*T) * batch_size")
    teacher_batch_size: int = Field(256, gt=0)
    pool_dtype: PoolDType = "float32"
    # How the pool stage reaches each state (issue 18): the paper's full chains, or a respaced grid of K hops.
    pool_prep: PoolPrep = PoolPrep()
    clip_denoised: bool = True
    train: TrainConfig = TrainConfig()
    eval_samples: int = Field(256, gt=1, description="samples per periodic FD' (train.eval_every)")
    runs: dict[str, RunSpec] = Field(default_factory=dict)

    @field_validator("runs")
    @classmethod
    def _run_names(cls, runs: dict[str, RunSpec]) -> dict[str, RunSpec]:
        for name in runs:
            if not name or any(ch in name for ch in "/\\ @"):
                raise ValueError(f"run name {name!r} must be non-empty without '/', '\\', ' ' or '@'")
        return runs

    def student_for(self, run: str) -> str:
        return self.runs[run].student or self.student

    def config_for(self, run: str, *, synthetic_size: int | None = None,
                   synthetic_respacing: str = "", random_flip: bool = False) -> DistillConfig:
        """The training-side config of one run (the object the trainer receives).

        `rho` stays out: a dynamic run trains from the pool stage's file, which carries its own rho, so the runs
        (and their DVC stages) do not depend on it.
        """
        spec = self.runs[run]
        return DistillConfig(
            **self.train.model_dump(),
            method=spec.method,
            teacher_batch_size=self.teacher_batch_size,
            discard_prob=spec.discard_prob if spec.method in POOL_METHODS else 0.0,
            pool_dtype=self.pool_dtype,
            clip_denoised=self.clip_denoised,
            data_fraction=spec.data_fraction if spec.method == "data_limited" else None,
            synthetic_size=synthetic_size if spec.method in DATASET_METHODS else None,
            synthetic_respacing=synthetic_respacing,
            random_flip=random_flip and spec.method in DATASET_METHODS,
        )


class EvaluateSettings(Section):
    num_samples: int = Field(1000, gt=1)
    respacing: str = Field("50", description="sampling steps (the paper: 50 IDDPM steps)")
    use_ddim: bool = False
    eta: float = Field(0.0, ge=0)
    batch_size: int = Field(500, gt=0)
    seed: int = Field(2, ge=0)
    use_ema: bool = True
    clip_denoised: bool = True
    grid_size: int = Field(64, gt=0, description="images in samples/grid.png")
    measure_costs: bool = Field(True, description="time 256 generations (the paper's Fig. 6 figure)")


class TrackingSettings(Section):
    enabled: bool = True
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (a server for teams)",
                     validate_default=True)
    experiment: str = "dkdm"
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(5.0, gt=0)
    register_students: bool = True
    connect_timeout_s: float = Field(5.0, gt=0, description="reachability check of a server at start")
    retry_interval_s: float = Field(2.0, gt=0, description="pause between delivery attempts during an outage")
    batch_interval_s: float = Field(1.0, ge=0, description="metrics are sent at most this often, in batches")
    flush_timeout_s: float = Field(60.0, ge=0, description="at the end, how long to wait for a lost server")
    spool_dir: Path = Path(".dkdm/spool")

    @field_validator("uri")
    @classmethod
    def _absolute_sqlite(cls, value: str) -> str:
        # MLflow caches one store per URI string in the process: a relative sqlite:/// path would keep writing to
        # the file of whatever directory the first command ran in. Resolve it against the working directory once.
        prefix = "sqlite:///"
        if value.startswith(prefix) and not value.startswith(prefix + "/") and value != prefix + ":memory:":
            return prefix + str(Path(value.removeprefix(prefix)).resolve())
        return value


class Settings(BaseSettings):
    """All sections of one profile. Build it with `load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="DKDM_", env_nested_delimiter="__", env_file=".env", extra="forbid", frozen=True,
        protected_namespaces=(),
    )

    profile: str = "default"
    scale: Literal["cpu", "paper"] = "cpu"
    space: Literal["pixel", "latent"] = Field("pixel", description="latent: diffusion on a first stage's latents")
    seed: int = Field(0, ge=0)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="your named architectures")
    runtime: RuntimeSettings = RuntimeSettings()
    data: DataSettings = DataSettings()
    diffusion: DiffusionConfig = DiffusionConfig()
    teacher: TeacherSettings = TeacherSettings()
    features: FeaturesSettings = FeaturesSettings()
    reference: ReferenceSettings = ReferenceSettings()
    distill: DistillSettings = DistillSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    tracking: TrackingSettings = TrackingSettings()
    tune: TuneSettings = TuneSettings()
    pipeline: PipelineSettings = PipelineSettings()

    @model_validator(mode="before")
    @classmethod
    def _pipeline_from_space(cls, values: Any) -> Any:
        return with_pipeline_defaults(values) if isinstance(values, dict) else values

    @model_validator(mode="before")
    @classmethod
    def _feature_kind_for_new_data(cls, values: Any) -> Any:
        """A profile that names no features.kind gets `digits` on the embedded digits and `learned` on any other
        data: the one space that reads every shape offline."""
        if not isinstance(values, dict):
            return values
        features, data = values.get("features"), values.get("data")
        if isinstance(features, BaseModel) or (isinstance(features, dict) and "kind" in features):
            return values
        dataset = data.get("dataset", "digits") if isinstance(data, dict) else getattr(data, "dataset", "digits")
        if dataset != "digits":
            return {**values, "features": {**(features or {}), "kind": "learned"}}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        from dkdm.architectures import resolve_settings
        from dkdm.compat import check_pair, check_preset, preset_shape

        resolve_settings(self)  # user presets and inline mappings become names that carry their config
        check_preset("teacher.preset", self.teacher.preset)
        check_preset("distill.student", self.distill.student)
        shape = preset_shape(self.teacher.preset)
        from dkdm.settings_latent import check_latent

        check_latent(self)  # latent profiles: the teacher works on the first stage's latents, not on the images
        check_pipeline(self.space, self.pipeline)
        if self.space == "pixel" and shape != (self.data.channels, self.data.image_size):
            raise ValueError(
                f"teacher.preset: {self.teacher.preset!r} makes {shape[0]}x{shape[1]}x{shape[1]} images but data is "
                f"{self.data.channels}x{self.data.image_size}x{self.data.image_size}"
            )
        if self.features.kind == "digits" and (self.data.channels, self.data.image_size) != (1, 8):
            raise ValueError(f"features.kind: 'digits' features need 1x8x8 images, the data is {self.data.channels}x"
                             f"{self.data.image_size}x{self.data.image_size}; use 'learned' (trained on your data, "
                             "offline) or 'inception'")
        for name, spec in self.distill.runs.items():
            student = spec.student or self.distill.student
            check_preset(f"distill.runs.{name}.student", student)
            check_pair(self.teacher.preset, student, field=f"distill.runs.{name}.student")
            try:
                self.distill.config_for(name)
            except ValidationError as err:
                raise ValueError(one_line(err, prefix=f"distill.runs.{name}")) from None
        return self

    def for_log(self) -> dict[str, Any]:
        """Every resolved setting as JSON-ready values (what MLflow logs and config/resolved.yaml holds)."""
        return self.model_dump(mode="json")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings)


def load_settings(profile_file: Path, overrides: dict[str, Any] | None = None) -> Settings:
    """Parse and validate the profile at `profile_file` (plus env, .env and overrides) once, at the edge."""
    if not profile_file.is_file():
        raise DkdmError(f"profile file {profile_file} does not exist")
    from_file = load_mapping(profile_file)

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return (init_settings, env_settings, dotenv_settings,
                    InitSettingsSource(settings_cls, init_kwargs=from_file))

    try:
        loaded = _FromFile(**(overrides or {}))
    except ValidationError as err:
        raise DkdmError(one_line(err)) from None
    except ValueError as err:  # a validator outside pydantic's wrapping
        raise DkdmError(f"{profile_file}: {str(err).splitlines()[0]}") from None
    return Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})
