"""Settings and profiles: every shipped profile is valid and complete for dvc.yaml; bad values fail before any
work with one line naming the field, exit code 2, and nothing written."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app
from dkdm.errors import DkdmError
from dkdm.settings import METHOD_SOURCES, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
PACKAGED = sorted(p.stem for p in profiles.packaged_dir().glob("*.yaml"))


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """An empty project folder holding the default profile as params.yaml, and no DKDM_* from the caller."""
    for key in list(os.environ):
        if key.startswith("DKDM_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((profiles.packaged_dir() / "default.yaml").read_text())
    return tmp_path


def _edit(path: Path, **changes: object) -> None:
    """Set dotted keys (`distill.rho`) in a YAML profile."""
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_shipped_profiles_include_the_required_ones():
    assert {"default", "ci", "cifar10", "celeba64", "imagenet32", "arch-sweep"} <= set(PACKAGED)


@pytest.mark.parametrize("name", PACKAGED)
def test_every_shipped_profile_validates(name, monkeypatch):
    monkeypatch.chdir(REPO)
    settings = load_settings(profiles.resolve(name))
    assert settings.profile == name
    assert settings.distill.runs, "a profile without runs would have an empty distill stage"
    for run in settings.distill.runs:
        config = settings.distill.config_for(run)
        assert config.method == settings.distill.runs[run].method


def _dvc_param_keys() -> set[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    keys: set[str] = set()
    for stage in spec["stages"].values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            keys.add(entry)
    return keys


@pytest.mark.parametrize("name", PACKAGED)
def test_profiles_define_every_param_dvc_yaml_reads(name):
    # DVC fails on a declared param that the active params.yaml lacks, so a profile must spell out all of them.
    data = yaml.safe_load((profiles.packaged_dir() / f"{name}.yaml").read_text())
    for key in _dvc_param_keys():
        node = data
        for part in key.replace("${key}", next(iter(data["distill"]["runs"]))).split("."):
            assert isinstance(node, dict) and part in node, f"{name}.yaml lacks {key} (dvc.yaml needs it)"
            node = node[part]


def test_params_yaml_is_the_default_profile():
    assert (REPO / "params.yaml").read_text() == (profiles.packaged_dir() / "default.yaml").read_text()


def test_default_profile_has_the_issue_shape(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_settings(profiles.resolve("default"))
    assert (s.data.dataset, s.teacher.source, s.features.kind) == ("digits", "train", "digits")
    assert {spec.method for spec in s.distill.runs.values()} == {"dynamic", "shuffled", "iterative", "data_free"}
    assert s.evaluate.respacing == "50"
    from training.models import get_preset_info

    ratio = get_preset_info(s.distill.student).num_parameters / get_preset_info(s.teacher.preset).num_parameters
    assert 0.15 < ratio < 0.4, f"student/teacher parameter ratio {ratio:.2f} should be about 1/4 as in the paper"


def test_env_and_dotenv_override_the_profile(workdir, monkeypatch):
    monkeypatch.setenv("DKDM_DISTILL__RHO", "0.3")
    (workdir / ".env").write_text("DKDM_EVALUATE__NUM_SAMPLES=123\n")
    s = load_settings(Path("params.yaml"))
    assert s.distill.rho == 0.3
    assert s.evaluate.num_samples == 123
    assert s.distill.train.lr == 0.001  # untouched keys keep the profile's value


def test_overrides_beat_env(workdir, monkeypatch):
    monkeypatch.setenv("DKDM_SEED", "5")
    assert load_settings(Path("params.yaml"), {"seed": 7}).seed == 7


def test_run_source_must_match_its_method(workdir):
    _edit(workdir / "params.yaml", **{"distill.runs.dynamic.source": "outputs/teacher"})
    with pytest.raises(DkdmError, match=r"distill\.runs\.dynamic.*outputs/pool"):
        load_settings(Path("params.yaml"))
    assert METHOD_SOURCES["data_free"] == "outputs/reference"


# A user's own 16x16 RGB .npz with a teacher and student written inline (the README's "Your own data" example);
# features.kind stays the default's 'digits'.
OWN_RGB16 = {"data.dataset": "npz", "data.path": "own.npz", "data.image_size": 16, "data.channels": 3,
             "teacher.preset": {"family": "adm-unet", "image_size": 16, "in_channels": 3, "num_channels": 32,
                                "num_res_blocks": 1, "channel_mult": [1], "attention_resolutions": "",
                                "learn_sigma": True},
             "distill.student": {"family": "dit", "input_size": 16, "patch_size": 4, "in_channels": 3,
                                 "hidden_size": 32, "depth": 2, "num_heads": 2, "learn_sigma": True}}
BAD_VALUES = [
    ({"distill.rho": -0.1}, "distill.rho", "-0.1"),
    ({"distill.rho": 0}, "distill.rho", "0"),
    ({"teacher.preset": "digits-teacherr"}, "teacher.preset", "digits-teacherr"),
    ({"distill.student": "no-such-net"}, "distill.student", "no-such-net"),
    ({"distill.student": "cifar10-14M"}, "distill.runs.dynamic.student", "cifar10-14M"),
    ({"data.dataset": "mnist"}, "data.dataset", "mnist"),
    ({"evaluate.num_samples": 1}, "evaluate.num_samples", "1"),
    ({"distill.train.ema_rate": 1.5}, "distill.train.ema_rate", "1.5"),
    ({"diffusion.noise_schedule": "quadratic"}, "diffusion", "quadratic"),
    ({"distill.runs.dynamic.method": "magic"}, "distill.runs.dynamic.method", "magic"),
    ({"teacher.source": "import", "teacher.checkpoint": "teachers/missing.pt"}, "teacher.checkpoint", "missing.pt"),
    ({"features.kind": "lerned"}, "features.kind", "lerned"),
    # The digits classifier cannot read a user's 16x16 RGB images: refused, pointing at `learned`.
    (OWN_RGB16, "features.kind", "'learned'"),
]


@pytest.mark.parametrize(("changes", "field", "value"), BAD_VALUES, ids=[b[1] + "=" + b[2] for b in BAD_VALUES])
def test_bad_value_fails_before_any_work(workdir, changes, field, value):
    _edit(workdir / "params.yaml", **changes)
    before = sorted(p.name for p in workdir.iterdir())
    result = CliRunner().invoke(app, ["data"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert field in lines[0] and value in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == before, "nothing may be written on a bad setting"


def test_learned_features_accept_any_shape(workdir):
    _edit(workdir / "params.yaml", **OWN_RGB16, **{"features.kind": "learned"})
    settings = load_settings(Path("params.yaml"))
    assert (settings.features.kind, settings.data.channels, settings.data.image_size) == ("learned", 3, 16)


def test_new_data_without_a_features_kind_gets_learned(workdir):
    _edit(workdir / "params.yaml", **OWN_RGB16)
    profile = yaml.safe_load((workdir / "params.yaml").read_text())
    del profile["features"]["kind"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(profile))
    assert load_settings(Path("params.yaml")).features.kind == "learned"
    del profile["features"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(profile))
    assert load_settings(Path("params.yaml")).features.kind == "learned"
    assert load_settings(Path("params.yaml"), {"features": {"kind": "inception"}}).features.kind == "inception"


def test_unknown_key_is_named(workdir):
    _edit(workdir / "params.yaml", **{"distill.rhoo": 0.4})
    result = CliRunner().invoke(app, ["profile", "show"])
    assert result.exit_code == 2
    assert "distill.rhoo" in result.stderr and "unknown setting" in result.stderr


def test_unknown_profile_lists_the_available_ones(workdir):
    result = CliRunner().invoke(app, ["data", "--profile", "cifar100"])
    assert result.exit_code == 2
    assert "cifar100" in result.stderr and "cifar10" in result.stderr


def test_profile_use_rewrites_params_yaml(workdir):
    result = CliRunner().invoke(app, ["profile", "use", "ci"])
    assert result.exit_code == 0, result.output
    assert (workdir / "params.yaml").read_text() == (profiles.packaged_dir() / "ci.yaml").read_text()
    assert load_settings(Path("params.yaml")).profile == "ci"
    assert not list(workdir.glob(".params.yaml.*")), "no temp file may be left behind"


def test_profile_use_refuses_a_broken_profile(workdir):
    original = (workdir / "params.yaml").read_text()
    (workdir / "configs").mkdir()
    (workdir / "configs" / "broken.yaml").write_text(original.replace("rho: 0.2", "rho: -1"))
    result = CliRunner().invoke(app, ["profile", "use", "broken"])
    assert result.exit_code == 2 and "distill.rho" in result.stderr
    assert (workdir / "params.yaml").read_text() == original


def test_user_profiles_in_configs_are_listed(workdir):
    (workdir / "configs").mkdir()
    (workdir / "configs" / "mine.yaml").write_text((workdir / "params.yaml").read_text())
    result = CliRunner().invoke(app, ["profile", "list"])
    assert result.exit_code == 0
    assert "mine" in result.stdout and "cifar10" in result.stdout


def test_settings_is_the_only_entry(workdir):
    s = load_settings(Path("params.yaml"))
    assert isinstance(s, Settings)
    assert s.for_log()["distill"]["rho"] == 0.2


def test_readme_own_data_example_validates(workdir):
    """The README's "Your own data" profile (`ci` with its sections changed) loads: inline 16x16x3 architectures."""
    section = (REPO / "README.md").read_text().split("### Your own data", 1)[1]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    profile = yaml.safe_load((profiles.packaged_dir() / "ci.yaml").read_text())
    for key, value in example.items():
        profile[key] = {**profile[key], **value}
    (workdir / "params.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    settings = load_settings(Path("params.yaml"))
    assert settings.features.kind == "learned" and settings.data.image_size == 16
    assert settings.teacher.preset.startswith("inline-adm-unet-") and settings.distill.student.startswith("inline-dit-")


def test_heldout_seed_must_differ_from_d_primes(workdir, monkeypatch):
    monkeypatch.setenv("DKDM_REFERENCE__HELDOUT_SEED", "1")
    with pytest.raises(DkdmError, match="heldout_seed: 1 is also D''s seed"):
        load_settings(Path("params.yaml"))
    monkeypatch.setenv("DKDM_REFERENCE__HELDOUT_SEED", "5")
    assert load_settings(Path("params.yaml")).reference.heldout_seed == 5
