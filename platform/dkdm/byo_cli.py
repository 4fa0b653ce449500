"""Commands for bringing your own architectures and diffusers models: `presets`, `inspect-teacher`, `export`."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from dkdm.command import ProfileOpt, context, handles_errors


def register(app: typer.Typer) -> None:
    """Add the commands to the `dkdm` app (cli.py calls this once)."""
    @app.command("presets")
    @handles_errors
    def presets_cmd(profile: ProfileOpt = None) -> None:
        """Every architecture a profile can name: built-in presets, your presets (configs/presets.yaml and the
        profile's presets section) and what the profile uses, with parameter counts."""
        from dkdm.architectures import describe, profile_architectures
        from training.models import list_presets

        settings = context(profile).settings
        typer.echo("built-in:")
        for name in list_presets():
            typer.echo(f"  {describe(name)}")
        typer.echo("yours:" if settings.presets
                   else "yours: none (define them under `presets:` or in configs/presets.yaml)")
        for name in settings.presets:
            typer.echo(f"  {describe(_user(settings, name))}")
        typer.echo(f"used by profile {settings.profile}:")
        for role, name in profile_architectures(settings):
            typer.echo(f"  {role} = {describe(name)}")

    @app.command("inspect-teacher")
    @handles_errors
    def inspect_teacher_cmd(
        folder: Annotated[Path, typer.Argument(
            help="diffusers folder: a DDPMPipeline, or a UNet2DModel with its scheduler")],
    ) -> None:
        """Print the `teacher:` and `diffusion:` profile sections that describe a diffusers teacher."""
        from dkdm.diffusers_glue import teacher_sections

        typer.echo(teacher_sections(folder))

    @app.command("export")
    @handles_errors
    def export_cmd(
        format: Annotated[str, typer.Option(
            "--format", help="diffusers: a folder DDPMPipeline.from_pretrained loads")] = "diffusers",
        run: Annotated[Optional[str], typer.Option("--run", "-r", help="student of distill.runs to export")] = None,
        checkpoint: Annotated[Optional[Path], typer.Option(
            help="a dkdm .safetensors checkpoint instead of --run")] = None,
        out: Annotated[Optional[Path], typer.Option(
            help="output folder (default: outputs/export/<run>-diffusers)")] = None,
        ema: Annotated[bool, typer.Option("--ema/--no-ema", help="export the EMA weights when present")] = True,
        profile: ProfileOpt = None,
    ) -> None:
        """Write a distilled student in another library's format (ADM UNet and diffusers-unet2d students)."""
        from dkdm.diffusers_glue import export_diffusers
        from dkdm.errors import DkdmError

        if format != "diffusers":
            raise DkdmError(f"--format: {format!r} is not supported (diffusers)")
        if (run is None) == (checkpoint is None):
            raise DkdmError("export: give exactly one of --run NAME or --checkpoint FILE")
        if run is not None:
            from dkdm.stages.common import student_file

            settings = context(profile).settings
            if run not in settings.distill.runs:
                raise DkdmError(f"--run: {run!r} is not in distill.runs ({', '.join(settings.distill.runs)})")
            checkpoint = student_file(run)
        name = run or checkpoint.stem
        export_diffusers(checkpoint, out or Path("outputs/export") / f"{name}-diffusers", ema=ema)


def _user(settings: object, name: str) -> str:
    from dkdm.architectures import resolve

    return resolve(f"presets.{name}", name, settings.presets)
