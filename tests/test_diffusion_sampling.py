"""Samplers and variance/prediction variants: reproducibility, shapes, exactness with an oracle network, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.diffusion import create_diffusion


def toy_network(x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
    """A fixed smooth function with eps and learned-range variance channels (no parameters, no randomness)."""
    scale = 1.0 + t_model.float().reshape(-1, 1, 1, 1) / 1000
    return torch.cat([0.3 * x * scale, torch.tanh(x)], dim=1)


class OracleNetwork:
    """The exact eps-predictor when all data is one image x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).

    It looks abar up with the original-process timestep it receives, so a diffusion that fed it respaced
    indices instead of timestep_map[t] would get a wrong x0 back.
    """

    def __init__(self, x0: torch.Tensor, steps: int = 1000, learn_sigma: bool = True):
        self.x0 = x0
        self.alphas_cumprod = torch.from_numpy(create_diffusion(steps=steps).alphas_cumprod)
        self.learn_sigma = learn_sigma

    def __call__(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[t_model].reshape(-1, 1, 1, 1)
        eps = ((x.double() - abar.sqrt() * self.x0) / (1 - abar).sqrt()).float()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if self.learn_sigma else eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("use_ddim, eta", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_sample_is_bit_reproducible_for_a_seed(use_ddim, eta):
    diffusion = create_diffusion(timestep_respacing="8")
    kwargs = dict(device="cpu", use_ddim=use_ddim, eta=eta)
    first = diffusion.sample(toy_network, (3, 3, 8, 8), generator=_gen(0), **kwargs)
    again = diffusion.sample(toy_network, (3, 3, 8, 8), generator=_gen(0), **kwargs)
    other = diffusion.sample(toy_network, (3, 3, 8, 8), generator=_gen(1), **kwargs)
    assert first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (5, 3, 4, 6), (2, 1, 16, 16)])
def test_sample_respects_shape_and_batch(shape):
    diffusion = create_diffusion(timestep_respacing="4")
    batches: list[int] = []

    def network(x, t_model):
        assert t_model.shape == (shape[0],) and t_model.dtype == torch.int64
        batches.append(x.shape[0])
        return toy_network(x, t_model)

    out = diffusion.sample(network, shape, generator=_gen(0), device="cpu")
    assert out.shape == shape
    assert batches == [shape[0]] * 4  # one batched call per step, no loop over samples


def test_ddim_eta0_is_deterministic_given_start_noise_and_batch_independent():
    diffusion = create_diffusion(timestep_respacing="ddim10")
    start = torch.randn((4, 3, 8, 8), generator=_gen(5))

    def run(seed, x):
        return diffusion.sample(toy_network, tuple(x.shape), generator=_gen(seed), device="cpu", use_ddim=True,
                                noise=x)

    together = run(0, start)
    assert torch.equal(together, run(123, start))
    torch.testing.assert_close(torch.cat([run(7, start[:2]), run(8, start[2:])]), together, rtol=0, atol=1e-6)
    noisy = diffusion.sample(toy_network, (4, 3, 8, 8), generator=_gen(123), device="cpu", use_ddim=True, eta=0.5,
                             noise=start)
    assert (noisy - together).abs().max() > 1e-2


@pytest.mark.parametrize("respacing", ["", "50", "ddim25", "10,20,30"])
def test_oracle_network_gives_exact_x0_at_every_step(respacing):
    x0 = torch.rand((2, 3, 4, 4), generator=_gen(0)) * 1.6 - 0.8
    diffusion = create_diffusion(timestep_respacing=respacing)
    network = OracleNetwork(x0.double())
    x_t = torch.randn((2, 3, 4, 4), generator=_gen(1))
    for step in [0, diffusion.num_timesteps // 3, diffusion.num_timesteps - 2]:
        t = torch.full((2,), step, dtype=torch.int64)
        out = diffusion.p_mean_variance(network, x_t, t, clip_denoised=False)
        # x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps cancels two terms of size ~sqrt(1/abar) |x_t| (up to
        # 640 * 3 at t=998), so float32 rounding allows a few ulps of that size.
        scale = float(diffusion.sqrt_recip_alphas_cumprod[step]) * float(x_t.abs().max())
        torch.testing.assert_close(out["pred_xstart"], x0, rtol=0, atol=4 * scale * 2**-23)


@pytest.mark.parametrize("use_ddim", [False, True])
def test_sampling_with_oracle_network_returns_the_data_point(use_ddim):
    x0 = torch.rand((2, 3, 4, 4), generator=_gen(0)) * 1.6 - 0.8
    diffusion = create_diffusion(timestep_respacing="10")
    out = diffusion.sample(OracleNetwork(x0.double()), (2, 3, 4, 4), generator=_gen(2), device="cpu", use_ddim=use_ddim)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_progress_bar_only_when_asked(capsys):
    diffusion = create_diffusion(timestep_respacing="3")
    diffusion.sample(toy_network, (1, 3, 4, 4), generator=_gen(0), device="cpu", progress=False)
    assert "sampling" not in capsys.readouterr().err
    diffusion.sample(toy_network, (1, 3, 4, 4), generator=_gen(0), device="cpu", progress=True)
    assert "sampling" in capsys.readouterr().err


def test_bf16_network_output_is_promoted_to_float32():
    diffusion = create_diffusion(timestep_respacing="10")
    x_t, t = torch.randn((2, 3, 4, 4), generator=_gen(0)), torch.tensor([0, 9])
    out = diffusion.p_mean_variance(lambda x, tm: toy_network(x, tm).bfloat16(), x_t, t)
    assert all(v.dtype == torch.float32 for v in out.values())


@pytest.mark.parametrize("sigma_small", [False, True])
def test_fixed_variances(sigma_small):
    diffusion = create_diffusion(learn_sigma=False, sigma_small=sigma_small, timestep_respacing="20")
    x_t, t = torch.randn((3, 3, 4, 4), generator=_gen(0)), torch.tensor([0, 1, 19])
    out = diffusion.p_mean_variance(lambda x, tm: 0.5 * x, x_t, t)
    posterior = np.log(diffusion.posterior_variance[[1, 1, 19]])
    expected = posterior if sigma_small else np.array([posterior[0], *np.log(diffusion.betas[[1, 19]])])
    np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0].numpy(), expected.astype(np.float32), rtol=1e-6)

    losses = diffusion.training_losses(lambda x, tm: 0.5 * x, x_t.clamp(-1, 1), t, generator=_gen(1))
    assert torch.equal(losses["loss"], losses["mse"]) and not losses["vb"].any()


def test_predict_xstart_uses_network_output_as_x0():
    diffusion = create_diffusion(predict_xstart=True, learn_sigma=False)
    x_t, t = torch.randn((2, 3, 4, 4), generator=_gen(0)), torch.tensor([10, 900])
    guess = torch.randn((2, 3, 4, 4), generator=_gen(1)) * 2
    out = diffusion.p_mean_variance(lambda x, tm: guess, x_t, t, clip_denoised=True)
    assert torch.equal(out["pred_xstart"], guess.clamp(-1, 1))


def test_vb_trains_only_the_variance_channels_and_rescales():
    x_start = torch.rand((2, 3, 4, 4), generator=_gen(0)) * 2 - 1
    t, noise = torch.tensor([0, 40]), torch.randn((2, 3, 4, 4), generator=_gen(1))
    output = toy_network(x_start, t).requires_grad_(True)
    diffusion = create_diffusion(timestep_respacing="50")
    losses = diffusion.training_losses(lambda x, tm: output, x_start, t, noise=noise)
    (grad,) = torch.autograd.grad(losses["vb"].sum(), output)
    assert not grad[:, :3].any() and grad[:, 3:].abs().sum() > 0

    rescaled = create_diffusion(timestep_respacing="50", rescale_learned_sigmas=True)
    vb = rescaled.training_losses(lambda x, tm: output, x_start, t, noise=noise)["vb"]
    torch.testing.assert_close(vb, losses["vb"] * 50 / 1000)


def test_step_from_output_adds_no_noise_at_t0():
    diffusion = create_diffusion(timestep_respacing="10")
    x_t, t = torch.randn((2, 3, 4, 4), generator=_gen(0)), torch.tensor([0, 5])
    out = diffusion.p_mean_variance(toy_network, x_t, t)
    step = diffusion.step_from_output(out, t, torch.ones_like(x_t))
    assert torch.equal(step[0], out["mean"][0])
    torch.testing.assert_close(step[1], out["mean"][1] + torch.exp(0.5 * out["log_variance"][1]))


def test_bad_inputs_give_clear_errors():
    diffusion = create_diffusion(timestep_respacing="10")
    x = torch.zeros((2, 3, 4, 4))
    with pytest.raises(TypeError, match="explicit torch.Generator"):
        diffusion.sample(toy_network, (2, 3, 4, 4), generator=None, device="cpu")
    with pytest.raises(ValueError, match="needs either `noise` or an explicit `generator`"):
        diffusion.p_sample(toy_network, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 10\)"):
        diffusion.p_mean_variance(toy_network, x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="t must be an int64 tensor of shape"):
        diffusion.p_mean_variance(toy_network, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"model output has shape \(2, 3, 4, 4\), expected \(2, 6, 4, 4\)"):
        diffusion.p_mean_variance(lambda x, tm: x, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="noise has shape"):
        diffusion.sample(toy_network, (2, 3, 4, 4), generator=_gen(0), device="cpu", noise=torch.zeros(1, 3, 4, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_matches_cpu_with_a_cpu_generator():
    diffusion = create_diffusion(timestep_respacing="5")
    cpu = diffusion.sample(toy_network, (2, 3, 8, 8), generator=_gen(0), device="cpu")
    cuda = diffusion.sample(toy_network, (2, 3, 8, 8), generator=_gen(0), device="cuda")
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-4)
