"""Schedules and respacing against the reference tables in golden/diffusion/schedules.npz."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.diffusion import DiffusionConfig, create_diffusion, make_betas, space_timesteps

# float64 tables are computed with the same float64 formulas as the reference; rtol 1e-10 leaves room for a
# different libm (cos/log/sqrt differ by an ulp across platforms) while catching any formula change (>= 1e-7).
SCHEDULE_RTOL = 1e-10

# prefix in schedules.npz -> create_diffusion arguments
PROCESSES = {
    "cosine": {},
    "linear": {"noise_schedule": "linear"},
    "spaced50": {"timestep_respacing": "50"},
    "spaced100": {"timestep_respacing": "100"},
    "ddim25": {"timestep_respacing": "ddim25"},
    "spaced_10_20_30": {"timestep_respacing": "10,20,30"},
    "ddim50": {"timestep_respacing": "ddim50"},
    "linear_spaced100": {"noise_schedule": "linear", "timestep_respacing": "100"},
    "cosine_T300_spaced7": {"steps": 300, "timestep_respacing": "7"},
}


@pytest.fixture(scope="module")
def schedules(golden_dir):
    return dict(np.load(golden_dir / "diffusion" / "schedules.npz"))


def _keys_of(schedules: dict, prefix: str) -> list[str]:
    # A key belongs to the longest matching prefix ("linear_spaced100_betas" is not a "linear_" table).
    def owner(key: str) -> str | None:
        matches = [p for p in PROCESSES if key.startswith(p + "_")]
        return max(matches, key=len) if matches else None

    return [k for k in schedules if owner(k) == prefix]


def test_every_schedule_key_is_covered(schedules):
    covered = {k for p in PROCESSES for k in _keys_of(schedules, p)}
    respacing_only = {k for k in schedules if k.startswith("space_T")}
    assert set(schedules) == covered | respacing_only


@pytest.mark.parametrize("prefix", list(PROCESSES))
def test_tables_match_reference(schedules, prefix):
    diffusion = create_diffusion(**PROCESSES[prefix])
    keys = _keys_of(schedules, prefix)
    assert f"{prefix}_timestep_map" in keys and f"{prefix}_betas" in keys
    for key in keys:
        name = key[len(prefix) + 1 :]
        ref = schedules[key]
        if name == "timestep_map":
            assert diffusion.timestep_map.dtype == torch.int64
            np.testing.assert_array_equal(diffusion.timestep_map.numpy(), ref, err_msg=key)  # integers: exact
            assert diffusion.num_timesteps == len(ref)
        else:
            got = getattr(diffusion, name)
            assert got.dtype == np.float64, key
            np.testing.assert_allclose(got, ref, rtol=SCHEDULE_RTOL, atol=0, err_msg=f"{key} (rtol {SCHEDULE_RTOL})")


def _spec_of(key: str) -> tuple[int, str]:
    steps, spec = key[len("space_T") :].split("_", 1)
    return int(steps), spec if spec.startswith("ddim") else spec.replace("_", ",")


def test_space_timesteps_matches_every_reference_spec(schedules):
    keys = [k for k in schedules if k.startswith("space_T")]
    assert len(keys) >= 30
    for key in keys:
        steps, spec = _spec_of(key)
        # Integer outputs: exact. The specs were chosen so that closed-form roundings fail.
        assert space_timesteps(steps, spec) == schedules[key].tolist(), key


def test_respacing_uses_round_half_to_even_on_accumulated_stride():
    # T=1000, N=21: stride 49.95; the closed form floor(i*stride + 0.5) keeps a different set.
    naive = sorted({int(np.floor(i * 999 / 20 + 0.5)) for i in range(21)})
    assert space_timesteps(1000, "21") != naive
    assert space_timesteps(1000, "21")[:3] == [0, 50, 100]


def test_respaced_process_keeps_original_alphas_cumprod():
    full = create_diffusion()
    spaced = create_diffusion(timestep_respacing="ddim25")
    kept = spaced.timestep_map.numpy()
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12)


def test_cosine_betas_are_capped_and_linear_scales_with_steps():
    cosine = make_betas("cosine", 1000)
    assert cosine.max() == pytest.approx(0.999) and cosine[-1] == pytest.approx(0.999)
    linear = make_betas("linear", 500)
    assert linear[0] == pytest.approx(2e-4) and linear[-1] == pytest.approx(0.04)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_schedule": "quadratic"}, "unknown noise_schedule 'quadratic'"),
        ({"steps": 0}, "diffusion steps must be a positive integer"),
        ({"timestep_respacing": "ddim999"}, "no integer stride gives exactly 999"),
        ({"timestep_respacing": "fifty"}, "bad timestep_respacing 'fifty'"),
        ({"timestep_respacing": "10,0"}, "every count must be >= 1"),
        ({"steps": 10, "timestep_respacing": "20"}, "cannot keep 20"),
    ],
)
def test_bad_configuration_gives_one_line_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        create_diffusion(**kwargs)
    assert "\n" not in str(info.value)


def test_config_round_trip_and_compatibility():
    teacher = create_diffusion(timestep_respacing="50").config
    student = DiffusionConfig.from_dict(teacher.to_dict())
    assert student == teacher
    assert teacher.same_process(DiffusionConfig(timestep_respacing="ddim25"))
    assert not teacher.same_process(DiffusionConfig(noise_schedule="linear"))
    assert not teacher.same_process(DiffusionConfig(steps=4000))
    with pytest.raises(ValueError, match="unknown diffusion config keys: colour"):
        DiffusionConfig.from_dict({"steps": 1000, "colour": "red"})
