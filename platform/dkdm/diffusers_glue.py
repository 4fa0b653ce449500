"""diffusers at the platform's edge: import a diffusers teacher, print its profile sections, export a student.

The conversions live in training.models.diffusers_io / diffusers_export; this module checks them against the
profile and writes the outputs. Every refusal is one line (DkdmError / ValueError) for the CLI.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from dkdm.console import Context, summary
from dkdm.errors import DkdmError

# The diffusion keys a diffusers scheduler decides (the rest are the profile's own choices).
PROCESS_KEYS = ("steps", "noise_schedule", "learn_sigma", "sigma_small", "predict_xstart", "beta_start", "beta_end")


def _non_default(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a UNet2DModel config that differ from diffusers' defaults (a short, exact inline mapping)."""
    from training.models.diffusers_unet import require_diffusers

    defaults = {k: p.default for k, p in inspect.signature(require_diffusers().UNet2DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    plain = json.loads(json.dumps(defaults, default=list))
    return {k: v for k, v in config.items() if k == "family" or plain.get(k, object()) != v}


def teacher_sections(path: Path) -> str:
    """The `teacher:` and `diffusion:` profile sections that describe a diffusers folder, as YAML."""
    import yaml

    from training.models.diffusers_io import read_diffusers_teacher

    teacher = read_diffusers_teacher(path)
    sections = {
        "teacher": {"source": "import", "checkpoint": str(path), "preset": _non_default(teacher.model_config)},
        "diffusion": {k: v for k, v in teacher.diffusion.items() if v is not None},
    }
    return yaml.safe_dump(sections, sort_keys=False, default_flow_style=None).rstrip()


def _check_against_profile(ctx: Context, teacher: Any, path: Path) -> None:
    from training.models import get_preset, parse_model_config

    settings = ctx.settings
    ours = settings.diffusion.to_dict()
    wrong = [k for k in PROCESS_KEYS if teacher.diffusion.get(k) != ours.get(k)]
    if wrong:
        want = ", ".join(f"{k}: {json.dumps(teacher.diffusion.get(k))}" for k in wrong)
        raise DkdmError(f"diffusion: the teacher's scheduler needs {want} (see `dkdm inspect-teacher {path}`)")
    declared = parse_model_config(get_preset(settings.teacher.preset)).to_dict()
    if declared != parse_model_config(teacher.model_config).to_dict():
        raise DkdmError(f"teacher.preset: {settings.teacher.preset!r} is not the UNet in {path}; use the mapping "
                        f"`dkdm inspect-teacher {path}` prints")


def import_diffusers(ctx: Context, path: Path, out: Path) -> Path:
    """A diffusers UNet2DModel + scheduler as our teacher checkpoint (after checking the profile matches)."""
    from dkdm.tracking import start_run
    from training.models import build_from_state_dict, save_checkpoint
    from training.models.diffusers_io import read_diffusers_teacher, teacher_provenance

    if out.suffix != ".safetensors":
        raise DkdmError(f"--out: {out} must end in .safetensors (a .json sidecar is written beside it)")
    teacher = read_diffusers_teacher(path)
    _check_against_profile(ctx, teacher, path)
    model = build_from_state_dict(teacher.model_config, teacher.state_dict)
    name = str(ctx.settings.teacher.preset)
    out.parent.mkdir(parents=True, exist_ok=True)
    with start_run(ctx.settings, stage="teacher", run_name=f"import-{name}", method="teacher", student=name,
                   tags={"dkdm.teacher": name, "dkdm.import.format": "diffusers"}) as tracker:
        saved = save_checkpoint(out, model, model_config=teacher.model_config,
                                diffusion_config=ctx.settings.diffusion.to_dict(),
                                provenance=teacher_provenance(teacher, path))
        tracker.log_params({"import.source": str(path), "import.format": "diffusers"})
    count = sum(p.numel() for p in model.parameters())
    summary(f"import-teacher: diffusers UNet2DModel ({count:,} parameters) from {path} -> {saved}")
    return saved


def export_diffusers(checkpoint: Path, out: Path, *, ema: bool = True) -> Path:
    """Write a student checkpoint as a DDPMPipeline folder; refused (one line) where no exact form exists."""
    from training.models import load_checkpoint
    from training.models.diffusers_export import to_unet2d
    from training.models.diffusers_io import write_pipeline

    if not Path(checkpoint).with_suffix(".json").is_file():
        raise DkdmError(f"--checkpoint: {checkpoint} is not a dkdm checkpoint (NAME.safetensors + NAME.json)")
    model, meta = load_checkpoint(checkpoint, ema=ema)
    try:
        unet = to_unet2d(model, meta.model_config)
    except ValueError as err:
        raise DkdmError(f"{checkpoint}: {err}") from None
    written = write_pipeline(unet, meta.diffusion_config, out)
    count = sum(p.numel() for p in unet.parameters())
    summary(f"export: {meta.model_config.family} ({meta.loaded} weights, {count:,} parameters) as a diffusers "
            f"DDPMPipeline -> {written}")
    return written
