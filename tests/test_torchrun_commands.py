"""Every `torchrun ... -m dkdm ...` line the docs show parses twice, as it will when a user pastes it: first by
torchrun's own parser (torch.distributed.run.get_args_parser, which reads any prefix of its options, e.g. `--run`
as `--run-path`), then by the dkdm command it reaches (typer's click make_context: the command, its options and its
required arguments, without running anything).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from torch.distributed.run import get_args_parser

from dkdm.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMPOSE = sorted((REPO / "docker").glob("compose*.yaml"))
# The commands that run as one job over many processes (dkdm.launch.run_job).
HEAVY = ("teacher", "train-teacher", "reference", "prepare-pool", "distill", "train", "evaluate", "sample")


def _code_lines(text: str) -> list[str]:
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def documented_torchrun_lines() -> list[tuple[str, str]]:
    """(where, the torchrun command from `torchrun` on) for each code line of the docs and compose files."""
    found = []
    sources = [(path, _code_lines(path.read_text())) for path in DOCS]
    sources += [(path, [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")])
                for path in COMPOSE]
    for path, lines in sources:
        for line in lines:
            at = line.find("torchrun ")
            if at >= 0 and "-m dkdm" in line:
                found.append((f"{path.relative_to(REPO)}: {line.strip()[:70]}", line[at:].split(" #")[0]))
    return found


def parse_like_a_user(command: str) -> None:
    """torchrun's parser, then the dkdm CLI's; raises SystemExit (torchrun) or a click usage error (dkdm)."""
    words = shlex.split(command)
    assert words[0] == "torchrun"
    parsed = get_args_parser().parse_args(words[1:])
    assert parsed.module and parsed.training_script == "dkdm", command
    group = typer.main.get_command(app)
    args = list(parsed.training_script_args)
    with group.make_context("dkdm", list(args)) as root:
        sub = group.get_command(root, args[0])
        assert sub is not None, f"dkdm has no command {args[0]!r}"
        sub.make_context(args[0], args[1:], parent=root)


def test_the_docs_show_torchrun_commands():
    where = {w.split(":")[0] for w, _ in documented_torchrun_lines()}
    assert {"README.md", "docs/docker.md"} <= where


@pytest.mark.parametrize(("where", "command"), documented_torchrun_lines(), ids=lambda v: v[:60])
def test_documented_torchrun_command_parses(where, command):
    parse_like_a_user(command)


def test_the_old_run_option_is_what_torchrun_refuses():
    """Why RUN is positional: `--run` is a prefix of torchrun's --run-path, and torchrun exits on it."""
    with pytest.raises(SystemExit):
        parse_like_a_user("torchrun --nproc_per_node 2 -m dkdm distill --run dynamic")
    parse_like_a_user("torchrun --nproc_per_node 2 -m dkdm distill dynamic --profile ci")
    parse_like_a_user("torchrun --nproc_per_node 2 -m dkdm distill -r dynamic -p ci")
    with pytest.raises(Exception, match="checkpoint") as refused:  # the dkdm side is checked too
        parse_like_a_user("torchrun --nproc_per_node 2 -m dkdm sample")
    assert type(refused.value).__name__ == "MissingParameter"


@pytest.mark.parametrize("name", HEAVY)
def test_every_option_of_a_heavy_command_has_a_name_torchrun_passes_through(name):
    """Each option keeps at least one spelling that torchrun hands to dkdm untouched (sample's --num is a prefix
    of --numa-binding: -n and --num-samples are not)."""
    command = typer.main.get_command(app).commands[name]
    stuck = []
    options = [p for p in command.params if p.param_type_name == "option"]
    assert any("--profile" in p.opts for p in options)
    for param in options:
        passes = []
        for opt in (*param.opts, *param.secondary_opts):
            try:
                get_args_parser().parse_args(["-m", "dkdm", name, opt, "1"])
                passes.append(opt)
            except SystemExit:
                pass
        if not passes:
            stuck.append(param.name)
    assert not stuck, f"dkdm {name}: no spelling of {stuck} survives torchrun's parser"


def test_a_self_launched_job_passes_the_command_through_untouched():
    """`dvc repro` calls `dkdm distill --run NAME`: the relaunch hands those words to the ranks unparsed."""
    from dkdm.launch import launcher_args
    from dkdm.settings import RuntimeSettings

    args = launcher_args(RuntimeSettings(nproc_per_node=2), ["distill", "--run", "dynamic", "--profile", "ci"])
    assert (args.nproc_per_node, args.standalone, args.module, args.training_script) == ("2", True, True, "dkdm")
    assert args.training_script_args == ["distill", "--run", "dynamic", "--profile", "ci"]
    nodes = launcher_args(RuntimeSettings(nproc_per_node=4, nnodes=2, rdzv_endpoint="node0:29400", rdzv_id="j"), [])
    assert (nodes.nnodes, nodes.rdzv_endpoint, nodes.rdzv_id, nodes.standalone) == ("2", "node0:29400", "j", False)


def test_more_processes_than_gpus_is_refused_in_one_line(monkeypatch):
    import torch

    from dkdm.errors import DkdmError
    from dkdm.launch import launch_if_requested
    from dkdm.settings import RuntimeSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for key in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DkdmError, match="runtime.nproc_per_node is 8 but this node has 2 GPU"):
        launch_if_requested(RuntimeSettings(nproc_per_node=8), ["distill", "dynamic"])
