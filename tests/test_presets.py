"""Presets and create_model: every reference architecture is reproduced key for key; configs are validated."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from training.models import count_parameters, create_model, factory, get_preset, get_preset_info, list_presets
from training.models.adm_unet import AttentionBlock

REFERENCE_PRESETS = ["cifar10-57M-teacher", "cifar10-44M", "cifar10-32M", "cifar10-24M", "cifar10-14M-student",
                     "celeba64-295M-teacher", "celeba64-57M-student", "dit-19M", "adm-small", "dit-small"]


def _arch(shared_dir, name):
    return json.loads((shared_dir / "reference" / "architectures" / f"{name}.json").read_text())


def _meta_model(config):
    with torch.device("meta"):  # shapes only: the 295M preset costs nothing
        return create_model(config)


@pytest.mark.parametrize("name", REFERENCE_PRESETS)
def test_reference_architecture_reproduced(shared_dir, name):
    arch = _arch(shared_dir, name)
    assert get_preset(name) == {"family": arch["family"], **arch["config"]}, "preset config differs from the JSON"
    model = _meta_model(get_preset(name))
    assert all(t.device.type == "meta" for t in model.state_dict().values()), "every tensor follows the device context"
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(arch["state_dict"].items()), "state_dict keys, order or shapes differ"
    assert count_parameters(model) == arch["num_parameters"]
    assert count_parameters(model, trainable_only=True) == arch["num_trainable_parameters"]
    info = get_preset_info(name)
    assert (info.num_parameters, info.num_trainable_parameters) == (arch["num_parameters"],
                                                                    arch["num_trainable_parameters"])
    assert info.paper_label == arch["paper_label"]


@pytest.mark.parametrize("name", [n for n in REFERENCE_PRESETS if not n.startswith("dit")])
def test_attention_heads_as_reference(shared_dir, name):
    arch = _arch(shared_dir, name)
    model = _meta_model(arch)  # the whole reference JSON is accepted as a config too
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, AttentionBlock)}
    expected = {b["module"]: (b["channels"], b["num_heads"]) for b in arch["derived"]["attention_blocks"]}
    assert {n: (m.norm.num_channels, m.num_heads) for n, m in blocks.items()} == expected
    assert model.config.attention_ds == tuple(arch["derived"]["attention_ds"])


def test_aliases_and_listing():
    assert get_preset("cifar10-57M") == get_preset("cifar10-57M-teacher") == get_preset("imagenet32-57M")
    assert get_preset("cifar10-14M") == get_preset("cifar10-14M-student") == get_preset("imagenet32-14M")
    assert get_preset("celeba64-295M") == get_preset("celeba64-295M-teacher")
    assert get_preset("celeba64-57M") == get_preset("celeba64-57M-student")
    names = list_presets()
    for required in ["cifar10-57M", "cifar10-44M", "cifar10-32M", "cifar10-24M", "cifar10-14M", "celeba64-295M",
                     "celeba64-57M", "dit-19M", "adm-small", "dit-small", "digits-teacher", "digits-student",
                     "digits-dit-student", "ci-teacher", "ci-student"]:
        assert required in names
    assert "imagenet32-57M" in list_presets(include_aliases=True) and "imagenet32-57M" not in names
    preset = get_preset("cifar10-57M")
    preset["num_channels"] = 1
    assert get_preset("cifar10-57M")["num_channels"] == 128, "get_preset must return a fresh copy"


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown name 'cifar10-57m'.*cifar10-57M") as err:
        get_preset("cifar10-57m")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["digits-teacher", "digits-student", "digits-dit-student", "ci-teacher",
                                  "ci-student"])
def test_cpu_presets_build_and_run(name):
    info = get_preset_info(name)
    torch.manual_seed(0)
    model = create_model(get_preset(name))
    assert count_parameters(model) == info.num_parameters
    assert count_parameters(model, trainable_only=True) == info.num_trainable_parameters
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0, 500, 999]))
    assert out.shape == (3, 2, 8, 8), "digits: 1 image channel -> eps + variance channels"


def test_cpu_preset_sizes():
    teacher = get_preset_info("digits-teacher").num_parameters
    student = get_preset_info("digits-student").num_parameters
    assert 1.0e6 <= teacher <= 1.2e6
    assert 0.2 <= student / teacher <= 0.35, "student ~1/4 of the teacher, as 14M/57M in the paper"
    assert get_preset_info("ci-student").num_parameters < 100_000
    assert get_preset_info("ci-teacher").num_parameters < 200_000


@pytest.mark.parametrize("size, mult", [(8, (1, 2)), (16, (1, 2, 2)), (32, (1, 2, 2, 2)), (64, (1, 2, 3, 4))])
def test_channel_mult_derived_from_image_size(size, mult):
    model = _meta_model({"family": "adm-unet", "image_size": size, "num_channels": 32, "num_res_blocks": 1,
                         "channel_mult": "", "attention_resolutions": "", "num_head_channels": 32})
    assert model.config.channel_mult == mult
    assert model.config.out_channels == 6


def test_custom_sizes_and_options():
    config = {"family": "adm-unet", "image_size": 16, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1,
              "channel_mult": "1,2", "attention_resolutions": "8", "num_heads": 2, "resblock_updown": False,
              "use_scale_shift_norm": False, "learn_sigma": False}
    model = create_model(config)
    keys = model.state_dict()
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.2.conv.weight" in keys
    assert keys["input_blocks.1.0.emb_layers.1.weight"].shape == (32, 128), "no scale-shift: one vector per channel"
    assert model(torch.randn(2, 1, 16, 16), torch.tensor([3, 4])).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("config, key", [
    ({"family": "unet"}, "family"),
    ({"family": "adm-unet", "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "num_chanels": 3},
     "num_chanels"),
    ({"family": "adm-unet", "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "class_cond": True},
     "class_cond"),
    ({"family": "adm-unet", "image_size": 48, "num_channels": 32, "num_res_blocks": 1}, "channel_mult"),
    ({"family": "adm-unet", "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "out_channels": 3},
     "out_channels"),
    ({"family": "adm-unet", "image_size": 32, "num_channels": "many", "num_res_blocks": 1}, "num_channels"),
    ({"family": "dit", "input_size": 32, "hidden_size": 384, "depth": 7, "num_heads": 6, "model_name": "DiT-S/2"},
     "model_name"),
    ({"family": "dit", "input_size": 32, "hidden_size": 64, "depth": 2, "num_heads": 4, "use_class": True},
     "class_cond"),
    ({"family": "dit", "input_size": 30, "patch_size": 4, "hidden_size": 64, "depth": 2, "num_heads": 4},
     "patch_size"),
])
def test_bad_config_is_one_line_value_error_naming_the_key(config, key):
    with pytest.raises(ValueError) as err:
        create_model(config)
    message = str(err.value)
    assert key in message and "\n" not in message, message


def test_dit_accepts_known_table_name_when_sizes_agree():
    model = _meta_model({"family": "dit", "input_size": 32, "patch_size": 2, "hidden_size": 384, "depth": 12,
                         "num_heads": 6, "model_name": "DiT-S/2"})
    assert len(model.blocks) == 12


def test_latent_families_dispatch_lazily(monkeypatch):
    received = {}

    class FakeVQ:
        @classmethod
        def from_config(cls, cfg):
            received.update(cfg)
            return torch.nn.Identity()

    fake = types.ModuleType("fake_vq_module")
    fake.VQModel = FakeVQ
    monkeypatch.setitem(sys.modules, "fake_vq_module", fake)
    monkeypatch.setitem(factory._LATENT_BUILDERS, "vq-f4", ("fake_vq_module", "VQModel"))
    model = create_model({"family": "vq-f4", "embed_dim": 3, "n_embed": 8192})
    assert isinstance(model, torch.nn.Identity)
    assert received == {"family": "vq-f4", "embed_dim": 3, "n_embed": 8192}

    monkeypatch.setitem(factory._LATENT_BUILDERS, "ldm-unet", ("training.models._absent_module", "LDMUNet"))
    with pytest.raises(ValueError, match="training.models._absent_module.LDMUNet"):
        create_model({"family": "ldm-unet", "image_size": 8})


def test_latent_families_reach_their_builders():
    # Integration with training.models.ldm_unet / .vq: create_model hands the reference keys through unchanged.
    config = {"family": "ldm-unet", "image_size": 16, "in_channels": 3, "out_channels": 3, "model_channels": 32,
              "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 16}
    model = _meta_model(config)
    assert type(model).__name__ == "LDMUNet"
    assert count_parameters(model) == 702_499  # reference/latent/architectures/ldm-unet-small.json


@pytest.mark.parametrize("name", ["cifar10-57M", "celeba64-295M", "dit-19M", "digits-teacher", "ci-student"])
def test_config_round_trips_through_its_dict(name):
    from training.models import parse_model_config

    config = parse_model_config(get_preset(name))
    as_dict = json.loads(json.dumps(config.to_dict()))  # what a checkpoint sidecar stores
    assert parse_model_config(as_dict) == config
    assert as_dict["family"] == get_preset_info(name).family
