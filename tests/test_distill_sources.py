"""Teacher data sources and pool preparation: timestep coverage, discard semantics, teacher stepping, artifacts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from training.diffusion import create_diffusion
from training.distill import (
    DiffusionTeacherStep,
    PoolConfig,
    PoolError,
    PoolSource,
    load_pool,
    noise_pool,
    prepare_in_memory,
    prepare_pool,
    read_pool_meta,
)
from training.models import create_model, get_preset
from training.train.rng import make_generator

SHAPE = (1, 4, 4)


class FakeTeacher:
    """A cheap deterministic 'teacher step' that records the timesteps of every call (mechanism tests only)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[torch.Tensor] = []
        self.fail_after = fail_after

    def __call__(self, x, t, noise):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(t.clone())
        out = {"model_output": 0.1 * x, "mean": 0.9 * x, "log_variance": torch.zeros_like(x)}
        return out, 0.9 * x + 0.1 * noise


def _source(pool, step, *, batch_size, select_all, discard_prob=0.0, seed=0):
    return PoolSource(pool, step, batch_size=batch_size, select_all=select_all, discard_prob=discard_prob,
                      select_generator=make_generator("cpu", seed, "select"),
                      noise_generator=make_generator("cpu", seed, "noise"))


def _prepared(num_entries, T, *, batch_size=64, step=None, seed=0):
    return prepare_in_memory(step or FakeTeacher(), num_entries, SHAPE, T, batch_size=batch_size,
                             dtype=torch.float32, device=torch.device("cpu"),
                             generator=make_generator("cpu", seed, "prepare"))


def test_preparation_ends_uniform_on_0_to_T_minus_2_in_full_mixed_batches():
    T, n, tb = 20, 3800, 64
    step = FakeTeacher()
    pool = _prepared(n, T, batch_size=tb, step=step)
    t_next = (pool.s - 1).numpy()
    assert t_next.min() == 0 and t_next.max() == T - 2, "end indices e ~ U{1..T-1}: next t in 0..T-2"
    counts = np.bincount(t_next, minlength=T - 1)
    assert chisquare(counts).pvalue > 1e-3, counts
    sizes = [len(c) for c in step.calls]
    evals = sum(sizes)
    assert evals == pool.meta["teacher_evals"] == int((T - pool.s).sum()), "one teacher eval per step walked"
    partial = sum(1 for s in sizes if s < tb)
    assert partial <= 2 and evals / (len(sizes) * tb) > 0.99, "longest-first keeps batches full to the end"
    assert sum(1 for c in step.calls if c.unique().numel() > 1) > len(sizes) // 2, "batches mix timesteps"


def test_dynamic_timesteps_are_uniform_after_warmup():
    # Pool of round(rho*T)*b with rho = 1; after warm-up each entry has wrapped around, so t ~ U{0..T-1}.
    T, b = 20, 8
    pool = _prepared(T * b, T)
    source = _source(pool, FakeTeacher(), batch_size=b, select_all=False)
    for _ in range(400):  # warm-up: every entry is picked ~20 times
        source.next_batch()
    seen = torch.cat([source.next_batch().t for _ in range(1500)]).numpy()
    counts = np.bincount(seen, minlength=T)
    assert len(counts) == T
    result = chisquare(counts)
    assert result.pvalue > 1e-3, f"chi-square p={result.pvalue:.2g} for counts {counts.tolist()}"


def test_dynamic_draws_distinct_entries_and_writes_back():
    T, b = 10, 6
    pool = _prepared(T * b, T)
    before_s = pool.s.clone()
    source = _source(pool, FakeTeacher(), batch_size=b, select_all=False)
    batch = source.next_batch()
    changed = (pool.s != before_s).nonzero().squeeze(1)
    assert changed.numel() == b, "exactly |B| distinct entries are stepped and written back"
    assert torch.equal(pool.s[changed].sort().values, batch.t.sort().values)
    for row in changed:  # each written-back entry holds the teacher's step from its own input
        k = int((batch.x_next == pool.x[row]).flatten(1).all(1).nonzero()[0])
        assert int(batch.t[k]) == int(pool.s[row])


def test_shuffled_covers_every_t_once_per_T_iterations():
    T, b = 16, 32
    source = _source(_prepared(b, T), FakeTeacher(), batch_size=b, select_all=True)
    first = source.next_batch().t
    assert first.unique().numel() > 1, "the single batch starts at shuffled timesteps"
    ts = torch.cat([first] + [source.next_batch().t for _ in range(T - 1)])
    assert torch.equal(torch.bincount(ts, minlength=T), torch.full((T,), b)), "each entry visits every t once"


def test_iterative_walks_one_shared_t_down_and_restarts():
    T, b = 5, 4
    pool = noise_pool(b, SHAPE, T, dtype=torch.float32, device=torch.device("cpu"),
                      generator=make_generator("cpu", 0, "prepare"))
    source = _source(pool, FakeTeacher(), batch_size=b, select_all=True)
    ts = [source.next_batch().t for _ in range(2 * T)]
    assert all(t.unique().numel() == 1 for t in ts)
    assert [int(t[0]) for t in ts] == [4, 3, 2, 1, 0, 4, 3, 2, 1, 0]


def test_recycled_entries_restart_from_fresh_noise():
    T, b = 3, 2
    pool = noise_pool(b, SHAPE, T, dtype=torch.float32, device=torch.device("cpu"),
                      generator=make_generator("cpu", 0, "prepare"))
    source = _source(pool, FakeTeacher(), batch_size=b, select_all=True)
    xs = [source.next_batch() for _ in range(T + 1)]
    assert int(xs[T].t[0]) == T - 1
    # fresh N(0, I) noise, not the previous chain's (shrunk) final state
    assert not torch.allclose(xs[T].x_t, xs[T - 1].x_next)


def test_discard_rate_matches_p_and_dropped_batches_still_advance():
    T, b, p = 7, 4, 0.3
    pool = noise_pool(b, SHAPE, T, dtype=torch.float32, device=torch.device("cpu"),
                      generator=make_generator("cpu", 0, "prepare"))
    source = _source(pool, FakeTeacher(), batch_size=b, select_all=True, discard_prob=p)
    kept_t, kept_batches = [], 0
    previous = T  # the fresh batch sits at s = T
    while source.teacher_batches < 3000:
        before = source.teacher_batches
        t = int(source.next_batch().t[0])
        steps = source.teacher_batches - before  # 1 kept + the dropped ones before it
        assert t == (previous - steps) % T, "a dropped batch was stepped but not rewound"
        previous = t if t > 0 else T
        kept_t.append(t)
        kept_batches += 1
    stats = source.stats()
    n = stats["teacher_batches"]
    assert stats["discarded"] + kept_batches == n
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(stats["discard_rate"] - p) < 4 * sigma, stats


def test_dynamic_discard_keeps_the_same_entries_until_kept():
    T, b = 12, 4
    pool = _prepared(T * b, T)
    source = _source(pool, FakeTeacher(), batch_size=b, select_all=False, discard_prob=0.5, seed=3)
    for _ in range(50):
        before_s = pool.s.clone()
        n_before = source.teacher_batches
        batch = source.next_batch()
        steps = source.teacher_batches - n_before
        changed = (pool.s != before_s).nonzero().squeeze(1)
        assert changed.numel() == b
        # a kept batch that followed drops has advanced `steps` teacher steps (mod the recycle)
        assert torch.all(((before_s[changed] - pool.s[changed]) % T) == steps % T)
        assert batch.t.numel() == b


def test_pool_step_is_the_teachers_ancestral_step():
    torch.manual_seed(0)
    teacher = create_model(get_preset("ci-teacher"))
    diffusion = create_diffusion(steps=10)
    step = DiffusionTeacherStep(teacher, diffusion, clip_denoised=True, batch_size=3)
    pool = _prepared(8, 10)
    source = _source(pool, step, batch_size=8, select_all=True)
    batch = source.next_batch()
    noise_gen = make_generator("cpu", 0, "noise")
    torch.randn((8, *SHAPE), generator=noise_gen)  # the recycle draw comes first
    noise = torch.randn((8, *SHAPE), generator=noise_gen)
    with torch.no_grad():
        ref = diffusion.p_sample(teacher, batch.x_t, batch.t, clip_denoised=True, noise=noise)
        ref_out = diffusion.p_mean_variance(teacher, batch.x_t, batch.t, clip_denoised=True)
    # chunked (3 + 3 + 2) teacher evaluation vs one call: same maths, tiny reduction-order differences only
    assert torch.allclose(batch.x_next, ref["sample"], atol=1e-6)
    assert torch.allclose(batch.teacher_out["mean"], ref_out["mean"], atol=1e-6)
    assert torch.equal(pool.x, batch.x_next) and torch.equal(pool.s, batch.t)


def _pool_config(**kw):
    return PoolConfig(rho=kw.pop("rho", 1.0), batch_size=kw.pop("batch_size", 8), teacher_batch_size=16, **kw)


def test_prepare_pool_writes_a_safetensors_artifact(tmp_path):
    diffusion = create_diffusion(steps=10, learn_sigma=False)
    out = prepare_pool(None, diffusion, _pool_config(pool_dtype="float16"), tmp_path / "pool.safetensors",
                       image_shape=SHAPE, device="cpu", progress=False, teacher_step=FakeTeacher())
    meta = read_pool_meta(out)
    assert meta["settings"]["num_entries"] == 80 and meta["settings"]["pool_dtype"] == "float16"
    pool = load_pool(out)
    assert pool.x.dtype == torch.float16 and pool.x.shape == (80, *SHAPE)
    assert int(pool.s.min()) >= 1 and int(pool.s.max()) <= 9
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(PoolError, match="not a dkdm pool|not a readable"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"not a safetensors file")
        load_pool(bad)


def test_interrupted_preparation_resumes_to_the_same_pool(tmp_path):
    diffusion = create_diffusion(steps=12, learn_sigma=False)
    cfg = _pool_config(save_every_s=1e-9)  # save after every batch
    straight = prepare_pool(None, diffusion, cfg, tmp_path / "a.safetensors", image_shape=SHAPE, device="cpu",
                            progress=False, teacher_step=FakeTeacher())
    target = tmp_path / "b.safetensors"
    with pytest.raises(KeyboardInterrupt):
        prepare_pool(None, diffusion, cfg, target, image_shape=SHAPE, device="cpu", progress=False,
                     teacher_step=FakeTeacher(fail_after=5))
    assert (tmp_path / "b.safetensors.partial").is_file() and not target.exists()
    resumed_step = FakeTeacher()
    prepare_pool(None, diffusion, cfg, target, image_shape=SHAPE, device="cpu", progress=False,
                 teacher_step=resumed_step)
    a, b = load_pool(straight), load_pool(target)
    assert torch.equal(a.x, b.x) and torch.equal(a.s, b.s), "resumed preparation must be bit-identical"
    assert sum(len(c) for c in resumed_step.calls) < a.meta["teacher_image_steps"], "resume skipped finished work"
    with pytest.raises(PoolError, match="different settings"):
        prepare_pool(None, diffusion, _pool_config(rho=2.0), target, image_shape=SHAPE, device="cpu",
                     progress=False, teacher_step=FakeTeacher())
