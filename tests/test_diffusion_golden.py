"""The diffusion maths against the reference arrays in golden/diffusion/*.npz.

The fixtures store the raw network output, so a stand-in network replays it; it also asserts that it was called
with the recorded original-process timesteps (`t_model`). One end-to-end test uses the real adm_small UNet.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.diffusion import create_diffusion, step_from_output

# Network outputs are replayed from the fixture here (or, end to end, recomputed by the same float32 UNet):
# the reference's own re-runs agree to <= 6e-8, so 1e-5 absolute only forgives a different kernel order.
NETWORK_ATOL = 1e-5
# Every other float array: the reference run in float64 moves them by <= 5.8e-7 of max(1, max|ref|) and an
# independent float32 implementation by <= 2.1e-7; 1e-4 of that scale (about 170x margin) still catches every
# convention error (swapped tables, missing clamp, respaced vs original tables), which move them by >= 1e-3.
SCALED_RTOL = 1e-4


def assert_scaled_close(got: torch.Tensor, ref: np.ndarray, key: str) -> float:
    got = got.detach().cpu().numpy()
    assert got.shape == ref.shape, f"{key}: shape {got.shape} != {ref.shape}"
    err = float(np.abs(got.astype(np.float64) - ref).max())
    bound = SCALED_RTOL * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"{key}: max|got-ref| = {err:.3g} > {bound:.3g} (1e-4 x max(1, max|ref|))"
    return err


def assert_network_close(got: torch.Tensor, ref: np.ndarray, key: str) -> None:
    err = float(np.abs(got.detach().cpu().numpy().astype(np.float64) - ref).max())
    assert err <= NETWORK_ATOL, f"{key}: max|got-ref| = {err:.3g} > {NETWORK_ATOL} (network output, absolute)"


class RecordedNetwork:
    """Replays a recorded raw network output after checking the timesteps it is called with."""

    def __init__(self, t_model: np.ndarray, output: np.ndarray, expected_input: np.ndarray | None = None):
        self.t_model = torch.from_numpy(t_model)
        self.output = torch.from_numpy(output)
        self.expected_input = expected_input
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert t.dtype == torch.int64, f"network got timesteps of dtype {t.dtype}, expected int64"
        assert torch.equal(t, self.t_model), f"network got t={t.tolist()}, recorded t_model={self.t_model.tolist()}"
        if self.expected_input is not None:
            assert_scaled_close(x, self.expected_input, "network input x_t")
        return self.output.clone()


def load(golden_dir, name: str) -> dict[str, np.ndarray]:
    return dict(np.load(golden_dir / "diffusion" / f"{name}.npz"))


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


@pytest.fixture(scope="module")
def pmv(golden_dir):
    return load(golden_dir, "p_mean_variance")


@pytest.mark.parametrize("prefix, respacing", [("", ""), ("spaced50_", "50")])
@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance(pmv, prefix, respacing, clip):
    diffusion = create_diffusion(timestep_respacing=respacing)
    if prefix:
        np.testing.assert_array_equal(diffusion.timestep_map.numpy(), pmv[f"{prefix}timestep_map"])
    suffix = "_clip" if clip else "_noclip"
    x_t, t = tensor(pmv["x_t"]), tensor(pmv[f"{prefix}t"])
    network = RecordedNetwork(pmv[f"{prefix}t_model"], pmv[f"{prefix}model_output"])

    out = diffusion.p_mean_variance(network, x_t, t, clip_denoised=clip)

    assert network.calls == 1
    assert_network_close(out["model_output"], pmv[f"{prefix}model_output"], "model_output")
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert_scaled_close(out[name], pmv[f"{prefix}{name}{suffix}"], f"{prefix}{name}{suffix}")
    # Unclipped x0 reaches ~7.5e4 at t=999 (1/sqrt(alpha_bar) = 2e4), hence the scale-relative bound.
    unclipped = diffusion.predict_xstart_from_eps(x_t, t, out["model_output"][:, :3])
    assert_scaled_close(unclipped, pmv[f"{prefix}pred_xstart_unclipped{suffix}"],
                        f"{prefix}pred_xstart_unclipped{suffix}")


def test_p_mean_variance_with_precomputed_output_does_not_call_model(pmv):
    diffusion = create_diffusion()
    out = diffusion.p_mean_variance(None, tensor(pmv["x_t"]), tensor(pmv["t"]),
                                    model_output=tensor(pmv["model_output"]))
    assert_scaled_close(out["mean"], pmv["mean_clip"], "mean_clip (precomputed output)")


@pytest.mark.parametrize("prefix, respacing", [("", ""), ("spaced50_", "50")])
def test_p_sample_step(golden_dir, pmv, prefix, respacing):
    ps = load(golden_dir, "p_sample")
    # p_sample.npz reuses the p_mean_variance inputs (same seed-6 x_t and the same t), so its network output is
    # the one recorded there.
    np.testing.assert_array_equal(ps["x_t"], pmv["x_t"])
    np.testing.assert_array_equal(ps[f"{prefix}t"], pmv[f"{prefix}t"])
    diffusion = create_diffusion(timestep_respacing=respacing)
    network = RecordedNetwork(ps[f"{prefix}t_model"] if prefix else pmv["t_model"], pmv[f"{prefix}model_output"])
    t = tensor(ps[f"{prefix}t"])

    out = diffusion.p_sample(network, tensor(ps["x_t"]), t, clip_denoised=True, noise=tensor(ps["noise"]))

    for name in ("sample", "pred_xstart") + (("mean", "log_variance") if not prefix else ()):
        assert_scaled_close(out[name], ps[f"{prefix}{name}"], f"{prefix}{name}")
    if not prefix:
        np.testing.assert_array_equal((t != 0).float().numpy(), ps["nonzero_mask"])


def test_ddim_step(golden_dir):
    """One DDIM step on "ddim25" at eta 0 and 0.5.

    The fixture does not store the network output at t_model [0,120,480,960], so the stand-in returns an epsilon
    re-derived (in float64) from the recorded clipped x0; the variance half is unused by DDIM. This checks the DDIM
    update alone (respaced alpha_bar/alpha_bar_prev, sigma(eta), the noise mask) without the UNet; the end-to-end
    test below checks it with the real network.
    """
    ps = load(golden_dir, "p_sample")
    diffusion = create_diffusion(timestep_respacing="ddim25")
    np.testing.assert_array_equal(diffusion.timestep_map.numpy(), ps["ddim25_timestep_map"])
    t = ps["ddim25_t"]
    x_t = ps["x_t"].astype(np.float64)
    recip = diffusion.sqrt_recip_alphas_cumprod[t][:, None, None, None]
    recipm1 = diffusion.sqrt_recipm1_alphas_cumprod[t][:, None, None, None]
    eps = (recip * x_t - ps["ddim25_eta0_pred_xstart"]) / recipm1
    output = np.concatenate([eps, np.zeros_like(eps)], axis=1).astype(np.float32)

    for eta, key in ((0.0, "eta0"), (0.5, "eta05")):
        network = RecordedNetwork(ps["ddim25_t_model"], output)
        out = diffusion.ddim_sample(network, tensor(ps["x_t"]), tensor(t), clip_denoised=True, eta=eta,
                                    noise=tensor(ps["noise"]))
        assert_scaled_close(out["sample"], ps[f"ddim25_{key}_sample"], f"ddim25_{key}_sample")
    assert_scaled_close(out["pred_xstart"], ps["ddim25_eta0_pred_xstart"], "ddim25_eta0_pred_xstart")


@pytest.mark.parametrize("prefix", ["", "uint8_"])
def test_training_losses(golden_dir, prefix):
    tl = load(golden_dir, "training_losses")
    diffusion = create_diffusion()
    t = tl[f"{prefix}t"]
    # t_model is stored for the first case only; the process is unspaced, so it equals t.
    np.testing.assert_array_equal(tl["t_model"], tl["t"])
    network = RecordedNetwork(t, tl[f"{prefix}model_output"], expected_input=tl[f"{prefix}x_t"])
    x_start, noise = tensor(tl[f"{prefix}x_start"]), tensor(tl["noise"])

    x_t = diffusion.q_sample(x_start, tensor(t), noise)
    losses = diffusion.training_losses(network, x_start, tensor(t), noise=noise)

    assert network.calls == 1
    assert_scaled_close(x_t, tl[f"{prefix}x_t"], f"{prefix}x_t")
    for name in ("loss", "mse", "vb"):
        assert_scaled_close(losses[name], tl[f"{prefix}{name}"], f"{prefix}{name}")


@pytest.mark.parametrize("fixture", ["dkdm_losses", "dkdm_losses_dit_student"])
def test_teacher_step_helpers_reproduce_dkdm_fixture(golden_dir, fixture):
    """p_mean_variance on a precomputed teacher output + step_from_output give the recorded teacher step."""
    kd = load(golden_dir, fixture)
    diffusion = create_diffusion()
    x_t, t = tensor(kd["x_t"]), tensor(kd["t"])

    teacher = diffusion.p_mean_variance(None, x_t, t, clip_denoised=True, model_output=tensor(kd["teacher_raw_output"]))
    x_tm1 = step_from_output(teacher, t, tensor(kd["noise"]))
    student = diffusion.p_mean_variance(None, x_t, t, clip_denoised=False,
                                        model_output=tensor(kd["student_raw_output"]))

    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert_scaled_close(teacher[name], kd[f"teacher_{name}"], f"teacher_{name}")
    assert_network_close(teacher["model_output"][:, :3], kd["teacher_model_output"], "teacher_model_output")
    assert_scaled_close(x_tm1, kd["x_tm1"], "x_tm1")
    assert_scaled_close(student["mean"], kd["student_mean"], "student_mean")
    assert_scaled_close(student["log_variance"], kd["student_log_variance"], "student_log_variance")


def _adm_small(golden_dir):
    from safetensors.torch import load_file

    from training.models import create_model

    config = json.loads((golden_dir / "adm_small" / "config.json").read_text())
    model = create_model({"family": config["family"], **config["config"]})
    model.load_state_dict(load_file(golden_dir / "adm_small" / "weights.safetensors"), strict=True)
    return model.eval()


@torch.no_grad()
def test_end_to_end_with_adm_small_unet(golden_dir, pmv):
    model = _adm_small(golden_dir)
    ps = load(golden_dir, "p_sample")
    seen: list[list[int]] = []

    def network(x, t_model):
        seen.append(t_model.tolist())
        return model(x, t_model)

    spaced = create_diffusion(timestep_respacing="50")
    out = spaced.p_mean_variance(network, tensor(pmv["x_t"]), tensor(pmv["spaced50_t"]), clip_denoised=True)
    assert seen[-1] == pmv["spaced50_t_model"].tolist()
    assert_network_close(out["model_output"], pmv["spaced50_model_output"], "spaced50_model_output (adm_small)")
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert_scaled_close(out[name], pmv[f"spaced50_{name}_clip"], f"spaced50_{name}_clip (adm_small)")

    ddim = create_diffusion(timestep_respacing="ddim25")
    for eta, key in ((0.0, "eta0"), (0.5, "eta05")):
        step = ddim.ddim_sample(network, tensor(ps["x_t"]), tensor(ps["ddim25_t"]), eta=eta, noise=tensor(ps["noise"]))
        assert seen[-1] == ps["ddim25_t_model"].tolist()
        assert_scaled_close(step["sample"], ps[f"ddim25_{key}_sample"], f"ddim25_{key}_sample (adm_small)")
    assert_scaled_close(step["pred_xstart"], ps["ddim25_eta0_pred_xstart"], "ddim25_eta0_pred_xstart (adm_small)")
