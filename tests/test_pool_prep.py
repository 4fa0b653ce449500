"""distill.pool_prep (issue 18): the respaced grid, the end steps it keeps, the teacher work it counts, resume.
The moments of respaced states against the paper's on the trained `ci` teacher: tests/test_sharded_stages.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from training.diffusion import create_diffusion
from training.distill import DiffusionTeacherStep, PoolConfig, PoolPrep, load_pool, prepare_pool, read_pool_meta
from training.distill.pool_prep import hop_count, next_index, teacher_work
from training.models import create_model, get_preset

SHAPE = (1, 8, 8)
RESPACED = PoolPrep(procedure="respaced", steps=3)


@pytest.mark.parametrize(("T", "K"), [(1000, 25), (1000, 10), (20, 5), (20, 1)])
def test_the_grid_starts_at_T_falls_strictly_and_ends_exactly_at_e(T, K):
    e = torch.arange(1, T)
    k = hop_count(e, T, K)
    assert torch.equal(k, (T - e).clamp(max=K))
    s = torch.full_like(e, T)
    for h in range(int(k.max())):
        walking = h < k
        nxt = next_index(torch.full_like(e, h), e, T, K)
        assert bool((nxt[walking] < s[walking]).all()), "every hop moves down"
        s = torch.where(walking, nxt, s)
    assert torch.equal(s, e), "the last hop lands exactly on the state's end step"


def test_the_paper_grid_is_one_step_per_teacher_call():
    T, e = 50, torch.arange(1, 50)
    for h in range(5):
        hops = torch.full_like(e, h)
        assert torch.equal(next_index(hops, e, T, None), torch.full_like(e, T - h - 1))


@pytest.fixture(autouse=True)
def _one_thread():
    # Not a golden test: one thread is faster for this tiny network on the shared CI cores.
    torch.set_num_threads(1)


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(get_preset("ci-teacher"))


def _prepare(tmp_path, prep: PoolPrep, name: str, **config):
    diffusion = create_diffusion(steps=12, noise_schedule="cosine", learn_sigma=True)
    teacher = _teacher()
    cfg = PoolConfig(rho=config.pop("rho", 2.0), batch_size=config.pop("batch_size", 32),
                     teacher_batch_size=config.pop("teacher_batch_size", 256), prep=prep, **config)
    step = DiffusionTeacherStep(teacher, diffusion, batch_size=256)
    out = prepare_pool(teacher, diffusion, cfg, tmp_path / name, image_shape=SHAPE, device="cpu", progress=False,
                       teacher_step=step)
    return out, diffusion.num_timesteps


def test_respaced_pools_keep_the_papers_end_steps_and_count_the_formulas_work(tmp_path):
    paper_file, T = _prepare(tmp_path, PoolPrep(), "paper.safetensors")
    fast_file, _ = _prepare(tmp_path, RESPACED, "respaced.safetensors")
    paper, fast = load_pool(paper_file), load_pool(fast_file)
    # Same seed, same draws of e: each state ends on the same step whichever way it got there.
    assert torch.equal(paper.s, fast.s)
    counts = np.bincount(paper.s.numpy(), minlength=T)[1:]
    assert len(paper) == 24 * 32 and counts.size == T - 1
    assert chisquare(counts).pvalue > 1e-3, f"end steps must be U{{1..T-1}}: {counts}"
    assert not torch.equal(paper.x, fast.x), "the respaced walk is another path"

    # The counted work is the formula: T - e per state for the paper, min(K, T - e) on the grid.
    paper_meta, fast_meta = read_pool_meta(paper_file), read_pool_meta(fast_file)
    assert paper_meta["teacher_image_steps"] == int((T - paper.s).sum()) == teacher_work(paper.s, T, PoolPrep())
    assert fast_meta["teacher_image_steps"] == int((T - fast.s).clamp(max=3).sum()) == teacher_work(fast.s, T, RESPACED)
    # In expectation over e ~ U{1..T-1}: T/2 against (sum_e min(K, T-e)) / (T-1) per state.
    expected = sum(min(3, T - e) for e in range(1, T)) / (T - 1) * len(fast)
    assert abs(fast_meta["teacher_image_steps"] - expected) / expected < 0.05
    assert fast_meta["settings"]["pool_prep"] == {"procedure": "respaced", "steps": 3, "sampler": "ancestral"}
    assert paper_meta["teacher_image_steps"] / fast_meta["teacher_image_steps"] > 1.8


def test_a_respaced_preparation_resumes_to_the_same_pool(tmp_path, monkeypatch):
    straight, _ = _prepare(tmp_path, RESPACED, "a.safetensors", rho=1.0, batch_size=16, teacher_batch_size=32)
    calls = {"n": 0}
    original = DiffusionTeacherStep.__call__

    def dies_after_four(self, x, t, noise):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("simulated kill")
        return original(self, x, t, noise)

    monkeypatch.setattr(DiffusionTeacherStep, "__call__", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, RESPACED, "b.safetensors", rho=1.0, batch_size=16, teacher_batch_size=32,
                 save_every_s=1e-9)
    assert (tmp_path / "b.safetensors.partial").is_file()
    monkeypatch.setattr(DiffusionTeacherStep, "__call__", original)
    resumed, _ = _prepare(tmp_path, RESPACED, "b.safetensors", rho=1.0, batch_size=16, teacher_batch_size=32,
                 save_every_s=1e-9)
    a, b = load_pool(straight), load_pool(resumed)
    assert torch.equal(a.x, b.x) and torch.equal(a.s, b.s), "the grid position survives the interruption"
    assert read_pool_meta(straight)["teacher_image_steps"] == read_pool_meta(resumed)["teacher_image_steps"]


def test_a_pool_prepared_for_a_run_walks_the_grid_and_logs_its_work():
    """The reproduction prepares each student's pool in memory: `pool_prep` must reach it through the run's config,
    and the run records the work (the metric the report puts beside each pool variant)."""
    from training.distill import DistillConfig, build_run
    from training.train.tracker import ListTracker

    diffusion = create_diffusion(steps=12, noise_schedule="cosine", learn_sigma=True)
    T = diffusion.num_timesteps
    works = {}
    for prep in (PoolPrep(), RESPACED):
        config = DistillConfig(method="dynamic", rho=1.0, batch_size=16, teacher_batch_size=64, iterations=1,
                               pool_prep=prep)
        assert config.pool_config().prep == prep
        tracker = ListTracker()
        trainer = build_run(config, student=create_model(get_preset("ci-student")), student_diffusion=diffusion,
                            image_shape=SHAPE, device="cpu", teacher=_teacher(), teacher_diffusion=diffusion,
                            tracker=tracker)
        pool = trainer.source.pool  # type: ignore[attr-defined]
        assert len(pool) == 12 * 16
        works[prep.procedure] = teacher_work(pool.s, T, prep)
        assert tracker.series("pool_teacher_image_steps") == [(0, float(works[prep.procedure]))]
    assert works["respaced"] < works["paper"]
