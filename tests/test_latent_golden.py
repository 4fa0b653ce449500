"""Latent space against the reference: LDM UNet / VQ-f4 layouts and the golden latent fixtures.

Tolerances (from reference/latent/golden/README.md, measured noise floors in tolerances.json):
* network outputs (UNet eps, VQ h/quant/decoded): max abs 1e-5. Float64 re-runs move them by <= 1.7e-7 and a thread
  count change by <= 1.6e-7, while the mistakes that matter (attention order, cos/sin order, GroupNorm eps, padding)
  move them by >= 3.8e-5.
* losses: relative 1e-5, because they are ~5e-3 / ~5e-4 and the mistakes above move the DKDM loss by ~1e-6 absolute.
* other floats (pred_x0, means, x_prev): 1e-4 * max(1, max|ref|); pred_x0 at t = 996 is ~344 and its float32 noise
  floor is 3e-5 there.
* float32 schedule tables: 1 float32 ulp, 2e-7 * max(1, max|ref|) (numpy vs torch sqrt may differ by one ulp).
* float64 betas / alphas_cumprod: rtol 1e-12 (numpy vs torch linspace differ by 1e-17).
* integers (timesteps, VQ indices): exact; every index is unambiguous (best-vs-second distance gap 1.9e-6 >> 1e-9).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.diffusion.ldm import LatentDiffusion, ddim_uniform_timesteps, latent_dkdm_loss
from training.models.latent_presets import LATENT_PRESET_PARAMETERS, LATENT_PRESETS, get_latent_preset
from training.models.ldm_unet import LDMUNet
from training.models.vq import VQModel

NETWORK_ATOL = 1e-5
LOSS_RTOL = 1e-5
OTHER_REL = 1e-4
F32_TABLE_REL = 2e-7

PRESETS = ["ldm-celebahq-274M-teacher", "ldm-ffhq-274M-teacher", "ldm-86M-student", "vq-f4", "ldm-unet-small",
           "vq-f4-small"]


@pytest.fixture(scope="module")
def latent_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "latent"


def _manifest(latent_dir: Path, preset: str) -> dict:
    return json.loads((latent_dir / "architectures" / f"{preset}.json").read_text())


def _build(family: str, config: dict) -> torch.nn.Module:
    return LDMUNet.from_config(config) if family == "ldm-unet" else VQModel.from_config(config)


def _max_abs(got: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0


def assert_network(got, ref, name):
    err = _max_abs(got, ref)
    assert err <= NETWORK_ATOL, f"{name}: max abs diff {err:.3g} > {NETWORK_ATOL} (network-output tolerance)"


def assert_other(got, ref, name):
    err, bound = _max_abs(got, ref), OTHER_REL * max(1.0, float(np.max(np.abs(ref))))
    assert err <= bound, f"{name}: max abs diff {err:.3g} > {bound:.3g} (1e-4 of max(1, |ref|))"


def assert_f32_table(got, ref, name):
    err, bound = _max_abs(got, ref), F32_TABLE_REL * max(1.0, float(np.max(np.abs(ref))))
    assert err <= bound, f"{name}: max abs diff {err:.3g} > {bound:.3g} (one float32 ulp)"


def assert_loss(got, ref, name):
    got = float(got)
    assert abs(got - float(ref)) <= LOSS_RTOL * abs(float(ref)), f"{name}: {got!r} vs {float(ref)!r} (rtol 1e-5)"


def assert_exact(got, ref, name):
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == ref.shape and np.array_equal(got, ref), f"{name}: integers differ from the reference"


# ---- architectures ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_manifest_layout(latent_dir: Path, preset: str) -> None:
    manifest = _manifest(latent_dir, preset)
    config = get_latent_preset(preset)
    family = config.pop("family")
    assert family == manifest["family"]
    assert config == manifest["config"], "preset config must be the yaml's constructor arguments verbatim"
    with torch.device("meta"):
        model = _build(family, config)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(k, v) for k, v in manifest["state_dict"].items()], "state_dict keys/order/shapes differ"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["num_parameters"] == LATENT_PRESET_PARAMETERS[preset]


def test_ldm_unet_attention_layout_matches_manifest(latent_dir: Path) -> None:
    manifest = _manifest(latent_dir, "ldm-celebahq-274M-teacher")
    with torch.device("meta"):
        model = LDMUNet.from_config(manifest["config"])
    for block in manifest["derived"]["attention_blocks"]:
        module = model.get_submodule(block["module"])
        assert module.num_heads == block["num_heads"], block["module"]
        assert module.qkv.in_channels == block["channels"]
        assert not module.new_order, "the LDM weights need the legacy qkv layout"


def test_create_model_dispatches_latent_families() -> None:
    from training.models import create_model

    unet = create_model(LATENT_PRESETS["ldm-unet-small"])
    vq = create_model(LATENT_PRESETS["vq-f4-small"])
    assert isinstance(unet, LDMUNet) and isinstance(vq, VQModel)
    assert sum(p.numel() for p in unet.parameters()) == LATENT_PRESET_PARAMETERS["ldm-unet-small"]


@pytest.mark.parametrize("bad, needle", [
    ({"use_spatial_transformer": True}, "use_spatial_transformer"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"family": "vq-f4"}, "family"),
])
def test_ldm_unet_config_errors_are_one_line(bad: dict, needle: str) -> None:
    config = {**get_latent_preset("ldm-unet-small"), **bad}
    with pytest.raises(ValueError, match=needle) as info:
        LDMUNet.from_config(config)
    assert "\n" not in str(info.value)


def test_vq_config_missing_key_is_named() -> None:
    config = get_latent_preset("vq-f4-small")
    del config["ddconfig"]["ch"]
    with pytest.raises(ValueError, match=r"missing key 'ddconfig\.ch'"):
        VQModel.from_config(config)


# ---- golden: UNet forward ----------------------------------------------------------------------------------------

def _small_unet(latent_dir: Path, weights: str) -> LDMUNet:
    cfg = json.loads((latent_dir / "golden" / "ldm_unet_small" / "config.json").read_text())["config"]
    model = LDMUNet.from_config(cfg).eval()
    model.load_state_dict(load_file(latent_dir / "golden" / "ldm_unet_small" / weights), strict=True)
    return model


def test_ldm_unet_small_forward(latent_dir: Path) -> None:
    ref = np.load(latent_dir / "golden" / "ldm_unet_small" / "forward.npz")
    model = _small_unet(latent_dir, "weights.safetensors")
    with torch.no_grad():
        out = model(torch.from_numpy(ref["x"]), torch.from_numpy(ref["t"]))
    assert_network(out, ref["out"], "forward.out")


# ---- golden: VQ codec --------------------------------------------------------------------------------------------

def test_vq_f4_small_codec(latent_dir: Path) -> None:
    gold = latent_dir / "golden" / "vq_f4_small"
    ref = np.load(gold / "codec.npz")
    cfg = json.loads((gold / "config.json").read_text())["config"]
    vq = VQModel.from_config(cfg).eval()
    vq.load_state_dict(load_file(gold / "weights.safetensors"), strict=True)
    diffusion = LatentDiffusion(scale_factor=float(ref["scale_factor"]))
    with torch.no_grad():
        x = torch.from_numpy(ref["x"])
        h = vq.encode(x)
        z = diffusion.encode_first_stage(vq, x)
        quant, loss, indices = vq.quantize(h)
        decoded = diffusion.decode_first_stage(vq, z)
        decoded_noquant = diffusion.decode_first_stage(vq, z, force_not_quantize=True)
        q_h = torch.from_numpy(ref["q_h"])
        q_quant, q_loss, q_indices = vq.quantize(q_h)
        q_decoded = diffusion.decode_first_stage(vq, q_h)
    for name, got in [("h", h), ("z", z), ("quant", quant), ("decoded", decoded),
                      ("decoded_noquant", decoded_noquant), ("q_quant", q_quant), ("q_decoded", q_decoded)]:
        assert_network(got, ref[name], f"codec.{name}")
    assert_exact(indices, ref["indices"], "codec.indices")
    assert_exact(q_indices, ref["q_indices"], "codec.q_indices")
    assert len(np.unique(q_indices.numpy())) == 51, "the second case must exercise the nearest-code search"
    assert_loss(loss, ref["quant_loss"], "codec.quant_loss")
    assert_loss(q_loss, ref["q_loss"], "codec.q_loss")


# ---- golden: schedule, DDIM, teacher step, DKDM loss -------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusion_ref(latent_dir: Path):
    return np.load(latent_dir / "golden" / "ldm_diffusion.npz")


def test_schedule_buffers(diffusion_ref) -> None:
    diffusion = LatentDiffusion()
    buffers = diffusion.state_dict()
    assert list(buffers) == [
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]
    for name, value in buffers.items():
        assert value.dtype == torch.float32, name
        assert_f32_table(value, diffusion_ref[name], name)
    assert_f32_table(diffusion.lvlb_weights, diffusion_ref["lvlb_weights"], "lvlb_weights")
    np.testing.assert_allclose(diffusion.betas_f64, diffusion_ref["betas_f64"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(diffusion.alphas_cumprod_f64, diffusion_ref["alphas_cumprod_f64"], rtol=1e-12, atol=0)
    assert float(buffers["posterior_log_variance_clipped"][0]) == pytest.approx(np.log(1e-20))


def test_ddim_tables(diffusion_ref) -> None:
    diffusion = LatentDiffusion()
    sched = diffusion.ddim_schedule(200, eta=0.0)
    assert_exact(sched.timesteps, diffusion_ref["ddim200_timesteps"], "ddim200_timesteps")
    assert_f32_table(sched.alphas, diffusion_ref["ddim200_alphas"], "ddim200_alphas")
    assert_f32_table(sched.alphas_prev, diffusion_ref["ddim200_alphas_prev"], "ddim200_alphas_prev")
    assert float(sched.alphas_prev[0]) == pytest.approx(0.9985, abs=1e-7), "alphas_prev[0] = alphas_cumprod[0]"
    assert_f32_table(sched.sigmas, diffusion_ref["ddim200_sigmas"], "ddim200_sigmas")
    assert_f32_table(sched.sqrt_one_minus_alphas, diffusion_ref["ddim200_sqrt_one_minus_alphas"],
                     "ddim200_sqrt_one_minus_alphas")
    # float64 sigmas from float32 inputs: the independent re-implementation differs by 1.1e-8, i.e. one float32 ulp.
    assert_f32_table(diffusion.ddim_schedule(200, eta=1.0).sigmas, diffusion_ref["ddim200_eta1_sigmas"],
                     "ddim200_eta1_sigmas")
    for steps in (50, 100, 30, 7, 250):
        assert_exact(ddim_uniform_timesteps(steps), diffusion_ref[f"ddim_timesteps_S{steps}"], f"S{steps}")


def test_ddim_rejects_step_counts_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        ddim_uniform_timesteps(3)  # stride 333 -> last timestep 1000
    with pytest.raises(ValueError, match="1..1000"):
        ddim_uniform_timesteps(0)


@pytest.mark.parametrize("index", [199, 0])
def test_ddim_step(latent_dir: Path, diffusion_ref, index: int) -> None:
    diffusion = LatentDiffusion()
    teacher = _small_unet(latent_dir, "weights.safetensors")
    with torch.no_grad():
        out = diffusion.ddim_step(teacher, torch.from_numpy(diffusion_ref["ddim_z"]), index,
                                  diffusion.ddim_schedule(200))
    key = f"ddim200_i{index}"
    assert_exact(out["t"], diffusion_ref[f"{key}_t"], f"{key}_t")
    assert_network(out["model_output"], diffusion_ref[f"{key}_model_output"], f"{key}_model_output")
    assert_other(out["sample"], diffusion_ref[f"{key}_x_prev"], f"{key}_x_prev")
    assert_other(out["pred_x0"], diffusion_ref[f"{key}_pred_x0"], f"{key}_pred_x0")


def test_teacher_pool_step_and_dkdm_loss(latent_dir: Path, diffusion_ref) -> None:
    diffusion = LatentDiffusion()
    teacher = _small_unet(latent_dir, "weights.safetensors")
    student = _small_unet(latent_dir, "weights_student.safetensors")
    z_t, t = torch.from_numpy(diffusion_ref["dkdm_z_t"]), torch.from_numpy(diffusion_ref["dkdm_t"])
    with torch.no_grad():
        step = diffusion.p_sample(teacher, z_t, t, noise=torch.from_numpy(diffusion_ref["dkdm_noise"]))
        per_sample = latent_dkdm_loss(student, z_t, t, step["eps"])
        student_out = student(z_t, t)
        singles = torch.cat([latent_dkdm_loss(student, z_t[i:i + 1], t[i:i + 1], step["eps"][i:i + 1])
                             for i in range(2)])
    assert_network(step["eps"], diffusion_ref["dkdm_teacher_out"], "dkdm_teacher_out")
    assert_other(step["pred_x0"], diffusion_ref["dkdm_teacher_pred_x0"], "dkdm_teacher_pred_x0")
    assert_other(step["mean"], diffusion_ref["dkdm_teacher_mean"], "dkdm_teacher_mean")
    assert_other(step["variance"], diffusion_ref["dkdm_teacher_variance"], "dkdm_teacher_variance")
    assert_other(step["log_variance"], diffusion_ref["dkdm_teacher_log_variance"], "dkdm_teacher_log_variance")
    assert_other(step["sample"], diffusion_ref["dkdm_x_prev"], "dkdm_x_prev")
    assert_network(student_out, diffusion_ref["dkdm_student_out"], "dkdm_student_out")
    for i in range(2):
        assert_loss(singles[i], diffusion_ref["dkdm_loss_per_sample"][i], f"dkdm_loss_per_sample[{i}]")
        assert_loss(per_sample[i], diffusion_ref["dkdm_loss_per_sample"][i], f"dkdm_loss_per_sample[{i}] (batch)")
    assert_loss(per_sample.mean(), diffusion_ref["dkdm_loss"], "dkdm_loss")
    assert_loss(per_sample.mean(), diffusion_ref["dkdm_loss_simple"], "dkdm_loss_simple")
    # The vlb term is only logged (weight 0); reproducing it checks lvlb_weights at the sampled t.
    vlb = (diffusion.lvlb_weights[t] * per_sample).mean()
    assert_loss(vlb, diffusion_ref["dkdm_loss_vlb"], "dkdm_loss_vlb")


# ---- behaviour beyond the fixtures -------------------------------------------------------------------------------

def test_p_sample_adds_no_noise_at_t0_and_needs_a_generator() -> None:
    diffusion = LatentDiffusion()
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t0 = torch.zeros(2, dtype=torch.int64)
    a = diffusion.p_sample(model, x, t0, generator=torch.Generator().manual_seed(1))["sample"]
    b = diffusion.p_sample(model, x, t0, generator=torch.Generator().manual_seed(2))["sample"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Generator"):
        diffusion.p_sample(model, x, torch.full((2,), 5, dtype=torch.int64))


def test_sample_is_reproducible_from_the_generator(latent_dir: Path) -> None:
    diffusion = LatentDiffusion()
    teacher = _small_unet(latent_dir, "weights.safetensors")
    runs = [diffusion.sample(teacher, (1, 3, 16, 16), generator=torch.Generator().manual_seed(s), steps=4, eta=eta)
            for s, eta in [(0, 0.0), (0, 0.0), (1, 0.0), (0, 1.0)]]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    assert not torch.allclose(runs[0], runs[3]), "eta 1 must inject noise"
    assert torch.isfinite(runs[0]).all()
