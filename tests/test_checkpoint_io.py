"""Checkpoint I/O: our safetensors + sidecar format, and safe loading of foreign ADM / DDPM-IP `.pt` files."""
from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest
import torch

from training.models import (
    CheckpointError,
    create_model,
    get_preset,
    import_teacher,
    load_checkpoint,
    load_foreign_state_dict,
    load_into,
    read_checkpoint_meta,
    read_checkpoint_tensors,
    save_checkpoint,
)

DIFFUSION = {"steps": 1000, "noise_schedule": "cosine", "learn_sigma": True, "timestep_respacing": ""}


def _randomised(name, seed):
    torch.manual_seed(seed)
    model = create_model(get_preset(name))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def _out(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, model.config.in_channels, model.config.image_size, model.config.image_size, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([5, 900]))


# ---------------------------------------------------------------- our format

@pytest.mark.parametrize("name", ["ci-teacher", "ci-student"])
def test_roundtrip_with_ema(tmp_path, name):
    model, ema = _randomised(name, 0), _randomised(name, 1)
    written = save_checkpoint(tmp_path / "run", model, model_config=get_preset(name), diffusion_config=DIFFUSION,
                              provenance={"source": "unit-test", "step": 7}, ema_model=ema)
    assert written == tmp_path / "run.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.safetensors"], "no temp files left"

    loaded, meta = load_checkpoint(tmp_path / "run")  # no flags: EMA weights by default
    assert meta.loaded == "ema" and meta.has_ema and not loaded.training
    assert torch.equal(_out(loaded), _out(ema))
    plain, meta_plain = load_checkpoint(tmp_path / "run.json", ema=False)
    assert meta_plain.loaded == "model" and torch.equal(_out(plain), _out(model))

    assert meta.model_config.to_dict() == create_model(get_preset(name)).config.to_dict()
    assert meta.diffusion_config == DIFFUSION
    prov = meta.provenance
    assert prov["source"] == "unit-test" and prov["step"] == 7 and "git_commit" in prov and prov["created"]
    assert prov["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert prov["sha256"] == hashlib.sha256((tmp_path / "run.safetensors").read_bytes()).hexdigest()


def test_without_ema_and_tensor_access(tmp_path):
    model = _randomised("ci-teacher", 2)
    save_checkpoint(tmp_path / "m.safetensors", model, model_config=get_preset("ci-teacher"),
                    diffusion_config=DIFFUSION)
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta.loaded == "model" and not meta.has_ema
    assert torch.equal(_out(loaded), _out(model))
    model_sd, ema_sd, sidecar = read_checkpoint_tensors(tmp_path / "m")
    assert ema_sd is None and set(model_sd) == set(model.state_dict())
    assert read_checkpoint_meta(tmp_path / "m")["model_config"]["family"] == "adm-unet"


def test_sidecar_rebuilds_reference_config_keys(tmp_path):
    # A sidecar holds the whole architecture, so a checkpoint rebuilds with no flags even for a user-defined size.
    config = {"family": "adm-unet", "image_size": 8, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1,
              "channel_mult": [1, 2], "attention_resolutions": "", "num_head_channels": 32}
    model = create_model(config).eval()
    save_checkpoint(tmp_path / "custom", model, model_config=config, diffusion_config=DIFFUSION)
    sidecar = json.loads((tmp_path / "custom.json").read_text())
    assert sidecar["model_config"]["channel_mult"] == [1, 2] and sidecar["model_config"]["out_channels"] == 2
    loaded, _ = load_checkpoint(tmp_path / "custom")
    assert torch.equal(_out(loaded), _out(model))


def test_save_refuses_bad_input_and_writes_nothing(tmp_path):
    model = _randomised("ci-teacher", 0)
    with pytest.raises(CheckpointError, match="model_config does not describe the network"):
        save_checkpoint(tmp_path / "x", model, model_config=get_preset("digits-student"), diffusion_config=DIFFUSION)
    with pytest.raises(ValueError, match="diffusion_config: not JSON-serialisable"):
        save_checkpoint(tmp_path / "x", model, model_config=get_preset("ci-teacher"),
                        diffusion_config={"betas": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "x", model, model_config=get_preset("ci-teacher"),
                        diffusion_config=DIFFUSION)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def saved(tmp_path):
    save_checkpoint(tmp_path / "c", _randomised("ci-teacher", 0), model_config=get_preset("ci-teacher"),
                    diffusion_config=DIFFUSION)
    return tmp_path / "c"


def _one_line_error(path, match, **kw):
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path, **kw)
    return str(err.value)


def test_missing_files(saved):
    (saved.parent / "c.safetensors").unlink()
    assert "\n" not in _one_line_error(saved, "tensor file not found")
    assert "\n" not in _one_line_error(saved.parent / "other", "sidecar not found")


def test_corrupt_tensor_file(saved):
    weights = saved.parent / "c.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    assert "\n" not in _one_line_error(saved, "sha256 does not match its sidecar")
    assert "\n" not in _one_line_error(saved, "not a readable safetensors file", verify=False)


def test_corrupt_sidecar(saved):
    (saved.parent / "c.json").write_text("{not json")
    assert "\n" not in _one_line_error(saved, "unreadable sidecar")
    (saved.parent / "c.json").write_text(json.dumps({"format": "something-else"}))
    _one_line_error(saved, "not a dkdm checkpoint sidecar")


def test_sidecar_config_that_does_not_match_the_tensors(saved):
    sidecar = json.loads((saved.parent / "c.json").read_text())
    sidecar["model_config"]["num_res_blocks"] = 2
    (saved.parent / "c.json").write_text(json.dumps(sidecar))
    message = _one_line_error(saved, "its model_config does not match the tensors")
    first, *rest = message.splitlines()
    assert first == "c.json: its model_config does not match the tensors"
    assert any("missing keys" in line for line in rest)

    sidecar["model_config"]["num_res_blocks"] = "two"
    (saved.parent / "c.json").write_text(json.dumps(sidecar))
    assert "\n" not in _one_line_error(saved, "bad model_config: .*num_res_blocks")


# ---------------------------------------------------------------- foreign .pt files

@pytest.fixture(scope="module")
def adm_small_state():
    return {k: v.clone() for k, v in _randomised("adm-small", 3).state_dict().items()}


@pytest.mark.parametrize("wrap, dtype", [("plain", torch.float32), ("plain", torch.float16),
                                         ("state_dict", torch.float32), ("model", torch.float16),
                                         ("module-prefix", torch.float32)])
def test_foreign_state_dicts_load(tmp_path, adm_small_state, wrap, dtype):
    state = {k: v.to(dtype) for k, v in adm_small_state.items()}
    if wrap == "module-prefix":
        payload = {"module." + k: v for k, v in state.items()}
    elif wrap == "plain":
        payload = state
    else:
        payload = {wrap: state, "step": 1000, "optimizer_name": "adamw"}
    torch.save(payload, tmp_path / "teacher.pt")
    loaded = load_foreign_state_dict(tmp_path / "teacher.pt")
    assert list(loaded) == list(adm_small_state)
    assert all(v.dtype == torch.float32 for v in loaded.values())
    for key, value in loaded.items():
        assert torch.equal(value, adm_small_state[key].to(dtype).float())
    model = load_into(create_model(get_preset("adm-small")), loaded)
    assert torch.equal(model.state_dict()["out.2.weight"], loaded["out.2.weight"])


def test_foreign_prefers_ema_when_wrapped_with_both(tmp_path, adm_small_state):
    ema = {k: v + 1 for k, v in adm_small_state.items()}
    torch.save({"model": adm_small_state, "ema": ema}, tmp_path / "both.pt")
    assert torch.equal(load_foreign_state_dict(tmp_path / "both.pt")["out.2.bias"], ema["out.2.bias"])
    raw = load_foreign_state_dict(tmp_path / "both.pt", prefer_ema=False)
    assert torch.equal(raw["out.2.bias"], adm_small_state["out.2.bias"])


class _Payload:
    """Pickles as a call to os.system: loading it with full pickle would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused_and_not_run(tmp_path, adm_small_state):
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": adm_small_state, "hook": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        load_foreign_state_dict(tmp_path / "evil.pt")
    assert "contains pickled code" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists(), "the pickled code ran"
    with pytest.raises(CheckpointError, match="contains pickled code"):
        import_teacher(tmp_path / "evil.pt", "adm-small", tmp_path / "out", diffusion_config=DIFFUSION)
    assert not marker.exists() and not (tmp_path / "out.json").exists()


def test_unreadable_or_unwrapped_foreign_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_foreign_state_dict(tmp_path / "junk.pt")
    torch.save({"weights": [1, 2], "epoch": 3}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"no state dict found \(top-level keys: weights, epoch"):
        load_foreign_state_dict(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="file not found"):
        load_foreign_state_dict(tmp_path / "absent.pt")


def test_key_mismatch_is_a_grouped_readable_diff(adm_small_state):
    state = dict(adm_small_state)
    for key in ["input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.0.bias",
                "middle_block.1.qkv.weight"]:
        state[key.replace("in_layers", "in_layer").replace("qkv", "to_qkv")] = state.pop(key)
    state["out.2.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(CheckpointError) as err:
        load_into(create_model(get_preset("adm-small")), state)
    assert str(err.value) == (
        "state dict does not match the model: 3 missing, 3 unexpected, 1 wrong shape "
        "(model has 270 keys, file has 270)\n"
        "  missing keys (3, in the model but not in the file):\n"
        "    input_blocks.1.0: in_layers.0.weight, in_layers.0.bias\n"
        "    middle_block.1: qkv.weight\n"
        "  unexpected keys (3, in the file but not in the model):\n"
        "    input_blocks.1.0: in_layer.0.weight, in_layer.0.bias\n"
        "    middle_block.1: to_qkv.weight\n"
        "  wrong shapes (1):\n"
        "    out.2: weight (file (3, 32, 3, 3), model (6, 32, 3, 3))")


def test_diff_truncates_and_hints_at_a_prefix(adm_small_state):
    wrapped = {"diffusion_model." + k: v for k, v in adm_small_state.items()}
    with pytest.raises(CheckpointError) as err:
        load_into(create_model(get_preset("adm-small")), wrapped)
    lines = str(err.value).splitlines()
    assert len(lines) < 30, "a 270-key mismatch must stay readable"
    assert any("(+" in line and "more)" in line for line in lines)
    assert any("more groups" in line for line in lines)
    assert lines[-1] == "  hint: 270 file keys are model keys with the extra prefix 'diffusion_model.'; strip it"


def test_import_teacher(tmp_path, adm_small_state):
    torch.save({k: v.half() for k, v in adm_small_state.items()}, tmp_path / "ema_0.9999.pt")
    out = import_teacher(tmp_path / "ema_0.9999.pt", "adm-small", tmp_path / "teacher", diffusion_config=DIFFUSION)
    assert out == tmp_path / "teacher.safetensors"
    model, meta = load_checkpoint(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, adm_small_state[key].half().float())
    prov = meta.provenance
    assert prov["source"] == "import-teacher" and prov["preset"] == "adm-small"
    assert prov["imported_dtypes"] == ["float16"]
    assert prov["imported_sha256"] == hashlib.sha256((tmp_path / "ema_0.9999.pt").read_bytes()).hexdigest()
    assert meta.diffusion_config == DIFFUSION


def test_import_teacher_with_wrong_preset_writes_nothing(tmp_path, adm_small_state):
    torch.save(copy.copy(adm_small_state), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"t.pt \(preset ci-teacher\) does not match the model"):
        import_teacher(tmp_path / "t.pt", "ci-teacher", tmp_path / "out", diffusion_config=DIFFUSION)
    with pytest.raises(ValueError, match="unknown name"):
        import_teacher(tmp_path / "t.pt", "cifar10-58M", tmp_path / "out", diffusion_config=DIFFUSION)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]
