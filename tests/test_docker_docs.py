"""(d) docs/docker.md and the README's Docker section agree with docker/.

The docs' tables are compared with the files both ways (nothing missing, nothing stale): the
services with their published ports, the stack's variables with their defaults, the volumes;
every variable the containers are given or the scripts read is explained somewhere on the page.
"""

from __future__ import annotations

import re

import pytest

import docker_support as ds

GENERIC_ENV = {"PATH", "LANG", "HOME", "DEBIAN_FRONTEND", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
               "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_CACHE_DIR",
               "SECONDS"}  # SECONDS: bash's clock in docker/ci-build.sh


def _table(text: str, header: str) -> list[list[str]]:
    """Rows of the markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"docs/docker.md has no table starting {header!r}"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@pytest.fixture(scope="module")
def docs() -> str:
    return ds.DOCS.read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    return ds.load_compose({})


def test_services_table_matches_compose(docs, compose):
    rows = _table(docs, "| Service | Image | Host port (default) |")
    documented = {_ticked(row[0])[0]: row for row in rows}
    assert set(documented) == set(compose["services"])
    for name, row in documented.items():
        service = compose["services"][name]
        assert _ticked(row[1]) == [service["image"]], f"{name}: image in docs {row[1]} vs {service['image']}"
        ports = [f"{p.host_ip}:{p.published}" for p in ds.published_ports(service)]
        assert _ticked(row[2]) == ports, f"{name}: ports in docs {row[2]} vs compose {ports}"


def test_variables_table_matches_compose_and_env_example(docs):
    rows = _table(docs, "| Variable | Default | Meaning |")
    documented = {_ticked(row[0])[0]: row[1] for row in rows}
    used = ds.variables_with_defaults(ds.COMPOSE_FILE.read_text())
    assert set(documented) == set(used) | set(ds.SECRET_VARIABLES)
    for name, cell in documented.items():
        if name in ds.SECRET_VARIABLES:
            assert "required" in cell
        else:
            assert _ticked(cell) == [used[name]], f"{name}: docs default {cell} vs compose {used[name]}"


def test_volumes_table_matches_compose(docs, compose):
    rows = _table(docs, "| Volume | Mounted at | Holds |")
    documented = {_ticked(row[0])[0]: _ticked(row[1])[0] for row in rows}
    assert set(documented) == set(compose["volumes"])
    mounts = {v.split(":")[0]: v.split(":")[1] for s in compose["services"].values() for v in s.get("volumes", [])}
    for volume, target in documented.items():
        assert mounts[volume] == target, f"{volume}: docs say {target}, compose mounts it at {mounts[volume]}"


def test_every_container_variable_is_explained(docs, compose):
    ticked = set(re.findall(r"`([A-Z][A-Z0-9_]*)", docs))
    given = {key for s in compose["services"].values() for key in (s.get("environment") or {})}
    for dockerfile in ds.DOCKERFILES:
        given |= ds.env_defined(ds.final_stage(ds.dockerfile_instructions(dockerfile)))
    read_by_scripts = set()
    for script in [*ds.DOCKER_DIR.glob("*.sh"), *ds.DOCKER_DIR.glob("*/*.sh")]:
        read_by_scripts |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script.read_text()))
    missing = sorted((given | read_by_scripts) - GENERIC_ENV - ticked)
    assert not missing, f"docs/docker.md does not mention: {missing}"


def test_docs_show_the_required_invocations(docs):
    for phrase in (
        "docker compose -f docker/compose.yaml up",
        "--scale optuna-worker=",
        "dvc remote add -d minio s3://dvc",
        "dvc remote modify minio endpointurl http://127.0.0.1:9000",
        "torchrun --nproc_per_node=8 -m dkdm distill",
        "--nnodes=2 --node_rank=0",
        "--rdzv_endpoint=node0:29400",
        "--storage=postgresql+psycopg2://dkdm@stack-host:5432/optuna",
        "## Verifying on a GPU host",
    ):
        assert phrase in docs, f"docs/docker.md lacks {phrase!r}"


def test_documented_ports_are_the_published_ones(docs, compose):
    published = {p.published for s in compose["services"].values() for p in ds.published_ports(s)}
    urls = set(re.findall(r"http://127\.0\.0\.1:(\d+)", docs))
    assert urls <= published, f"docs link ports nothing publishes: {sorted(urls - published)}"
    assert published <= urls | set(re.findall(r"127\.0\.0\.1:(\d+)`", docs))


def test_readme_docker_section_agrees_with_the_files(compose):
    readme = ds.REPO_ROOT / "README.md"
    text = readme.read_text() if readme.exists() else ""
    match = re.search(r"^## Docker\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        pytest.skip("README.md has no '## Docker' section yet (the lead pastes it from the docker report)")
    section = match.group(1)
    assert "docs/docker.md" in section
    services_line = next(line for line in section.splitlines() if line.startswith("Services:"))
    assert set(_ticked(services_line)) == set(compose["services"])
    published = {p.published for s in compose["services"].values() for p in ds.published_ports(s)}
    assert set(re.findall(r"127\.0\.0\.1:(\d+)", section)) <= published
    known = set(ds.variables_with_defaults(ds.COMPOSE_FILE.read_text())) | set(ds.SECRET_VARIABLES)
    for name in re.findall(r"`([A-Z][A-Z0-9_]{3,})", section):
        assert name in known, f"README mentions {name}, which docker/compose.yaml does not use"
