"""The `pipeline` section: the two facts dvc.yaml needs to build the stage graph of the active profile.

DVC has no conditionals, so a stage that only latent profiles need (the first stage, `autoencoder`) is a
`foreach` over `pipeline.first_stage` ([] in pixel space: the stage does not exist there), and the diffusion
stages depend on `pipeline.first_stage_out` (the autoencoder's out in latent space, the data in pixel space).
Both follow from `space`; a profile spells them out because DVC reads params.yaml as it is, and dkdm checks that
they agree with `space`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# What each space's pipeline holds; tests/test_settings.py checks every shipped profile against it.
FIRST_STAGE = {"pixel": [], "latent": ["autoencoder"]}
FIRST_STAGE_OUT = {"pixel": "outputs/data", "latent": "outputs/autoencoder"}


class PipelineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    first_stage: list[Literal["autoencoder"]] | None = Field(
        None, description="stages before the teacher (dvc.yaml's foreach): [autoencoder] in latent space, else []")
    first_stage_out: str | None = Field(
        None, description="what the diffusion stages read images or latents through: the first stage's out "
                          "(outputs/autoencoder) in latent space, the data (outputs/data) in pixel space")


def check_pipeline(space: str, pipeline: PipelineSettings) -> None:
    """A `pipeline` section that disagrees with `space` would make DVC run a stage the profile cannot use."""
    if pipeline.first_stage is not None and pipeline.first_stage != FIRST_STAGE[space]:
        raise ValueError(f"pipeline.first_stage: a {space} profile has {FIRST_STAGE[space]} "
                         f"(got {pipeline.first_stage})")
    if pipeline.first_stage_out is not None and pipeline.first_stage_out != FIRST_STAGE_OUT[space]:
        raise ValueError(f"pipeline.first_stage_out: a {space} profile reads {FIRST_STAGE_OUT[space]!r} "
                         f"(got {pipeline.first_stage_out!r})")


def with_pipeline_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Raw settings whose `pipeline` keys the profile left out, filled in from `space` (a user's short profile)."""
    space, pipeline = values.get("space", "pixel"), values.get("pipeline")
    if space not in FIRST_STAGE or not (pipeline is None or isinstance(pipeline, dict)):
        return values  # a bad space or section is reported by validation, with its field name
    defaults = {"first_stage": FIRST_STAGE[space], "first_stage_out": FIRST_STAGE_OUT[space]}
    return {**values, "pipeline": {**defaults, **(pipeline or {})}}
