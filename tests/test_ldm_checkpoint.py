"""Released CompVis LDM checkpoint layout: build one from the small models, load it, sample and decode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.diffusion.ldm import LatentDiffusion
from training.models.latent_presets import get_latent_preset
from training.models.ldm_checkpoint import (
    LDMCheckpointError,
    ema_key,
    ldm_checkpoint_state_dict,
    load_first_stage_checkpoint,
    load_ldm_checkpoint,
)
from training.models.ldm_unet import LDMUNet
from training.models.vq import VQModel


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture()
def parts():
    unet = _randomised(LDMUNet.from_config(get_latent_preset("ldm-unet-small")), 1)
    ema = _randomised(LDMUNet.from_config(get_latent_preset("ldm-unet-small")), 2)
    vq = _randomised(VQModel.from_config(get_latent_preset("vq-f4-small")), 3)
    return unet, ema, vq, LatentDiffusion()


def _save(path: Path, state: dict) -> Path:
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, path)
    return path


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_layout_matches_released_checkpoint_rules(shared_dir: Path, parts) -> None:
    unet, ema, vq, diffusion = parts
    state = ldm_checkpoint_state_dict(unet, diffusion, ema_unet=ema, first_stage=vq)
    released = json.loads((shared_dir / "reference/latent/architectures/ldm-celebahq-full-checkpoint-keys.json")
                          .read_text())["state_dict"]
    # Same prefix order and naming rules as the released file (whose UNet is bigger but named alike).
    def group(key: str) -> str:
        return next((p for p in ("model.diffusion_model.", "model_ema.", "first_stage_model.") if key.startswith(p)),
                    "buffer")
    def runs(keys) -> list[str]:
        out: list[str] = []
        for k in keys:
            if not out or out[-1] != group(k):
                out.append(group(k))
        return out
    assert runs(state) == runs(released) == ["buffer", "model.diffusion_model.", "model_ema.", "first_stage_model."]
    assert [k for k in state if group(k) == "buffer"] == [k for k in released if group(k) == "buffer"]
    assert list(state)[len(unet.state_dict()) + 12: len(unet.state_dict()) + 14] == [
        "model_ema.decay", "model_ema.num_updates"]
    assert state["model_ema.num_updates"].dtype == torch.int32
    assert ema_key("input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"
    assert ema_key("time_embed.0.weight") in released
    assert len(state) == 12 + 2 * 128 + 2 + 153


def test_load_sample_and_decode(tmp_path: Path, parts) -> None:
    unet, ema, vq, diffusion = parts
    path = _save(tmp_path / "model.ckpt", ldm_checkpoint_state_dict(unet, diffusion, ema_unet=ema, first_stage=vq))
    loaded = load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"),
                                 first_stage_config=get_latent_preset("vq-f4-small"))
    assert loaded.ema_used
    _assert_same_weights(loaded.unet, ema)  # the teacher is the EMA UNet by default
    _assert_same_weights(loaded.first_stage, vq)
    raw = load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"), ema=False)
    _assert_same_weights(raw.unet, unet)
    assert raw.first_stage is None

    z = loaded.diffusion.sample(loaded.unet, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0), steps=4)
    with torch.no_grad():
        images = loaded.diffusion.decode_first_stage(loaded.first_stage, z)
        z_ref = diffusion.sample(ema, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0), steps=4)
        expected = vq.decode(z_ref)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_missing_and_misshapen_keys_are_grouped(tmp_path: Path, parts) -> None:
    unet, ema, vq, diffusion = parts
    state = ldm_checkpoint_state_dict(unet, diffusion, ema_unet=ema, first_stage=vq)
    del state["model.diffusion_model.out.2.bias"]
    del state[ema_key("middle_block.1.qkv.weight")]
    state["first_stage_model.quantize.embedding.weight"] = torch.zeros(65, 3)
    state["cond_stage_model.foo"] = torch.zeros(1)
    path = _save(tmp_path / "bad.ckpt", state)
    with pytest.raises(LDMCheckpointError) as info:
        load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"),
                            first_stage_config=get_latent_preset("vq-f4-small"))
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("UNet (model.diffusion_model.*): 1 missing [out.2.bias]",
                 "EMA (model_ema.*): 1 missing [model_ema.diffusion_modelmiddle_block1qkvweight]",
                 "first stage (first_stage_model.*): 1 shape mismatches",
                 "quantize.embedding.weight (65, 3) vs (64, 3)",
                 "unexpected keys outside the LDM layout: [cond_stage_model.foo]"):
        assert part in msg, msg


def test_wrong_architecture_is_reported_not_half_loaded(tmp_path: Path, parts) -> None:
    unet, ema, vq, diffusion = parts
    path = _save(tmp_path / "model.ckpt", ldm_checkpoint_state_dict(unet, diffusion, ema_unet=ema))
    other = {**get_latent_preset("ldm-unet-small"), "model_channels": 64}
    mismatch = r"shape mismatches .*time_embed\.0\.weight \(128, 32\) vs \(256, 64\)"
    with pytest.raises(LDMCheckpointError, match=mismatch):
        load_ldm_checkpoint(path, unet_config=other)
    with pytest.raises(LDMCheckpointError, match="first_stage_model.*none in the checkpoint"):
        load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"),
                            first_stage_config=get_latent_preset("vq-f4-small"))


def test_schedule_buffers_are_checked(tmp_path: Path, parts) -> None:
    unet, ema, _, diffusion = parts
    path = _save(tmp_path / "model.ckpt", ldm_checkpoint_state_dict(unet, diffusion, ema_unet=ema))
    with pytest.raises(LDMCheckpointError, match="schedule buffers differ from ours .*linear_end 0.012.*betas"):
        load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"),
                            diffusion=LatentDiffusion(linear_end=0.012))


def test_no_ema_in_checkpoint_needs_ema_false(tmp_path: Path, parts) -> None:
    unet, _, _, diffusion = parts
    state = {k: v for k, v in ldm_checkpoint_state_dict(unet, diffusion).items() if not k.startswith("model_ema.")}
    path = _save(tmp_path / "noema.ckpt", state)
    with pytest.raises(LDMCheckpointError, match="pass ema=False"):
        load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"))
    _assert_same_weights(load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"), ema=False).unet,
                         unet)


def test_standalone_first_stage_ignores_loss_keys(tmp_path: Path, parts) -> None:
    _, _, vq, _ = parts
    state = dict(vq.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    path = _save(tmp_path / "vq.ckpt", state)
    _assert_same_weights(load_first_stage_checkpoint(path, get_latent_preset("vq-f4-small")), vq)
    del state["encoder.conv_in.bias"]
    with pytest.raises(LDMCheckpointError, match=r"1 missing \[encoder.conv_in.bias\]"):
        load_first_stage_checkpoint(_save(tmp_path / "vq_bad.ckpt", state), get_latent_preset("vq-f4-small"))


class _NotAllowlisted:
    """An arbitrary pickled object, as a Lightning callback or hyper-parameter container would be."""


def test_unsafe_or_missing_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "callback": _NotAllowlisted()}, path)
    with pytest.raises(LDMCheckpointError, match="refused: this checkpoint contains pickled code"):
        load_ldm_checkpoint(path, unet_config=get_latent_preset("ldm-unet-small"))
    with pytest.raises(LDMCheckpointError, match="not found"):
        load_ldm_checkpoint(tmp_path / "absent.ckpt", unet_config=get_latent_preset("ldm-unet-small"))
