"""The baselines' random horizontal flip (data.random_flip): its rate, that it is seeded and resumable, that DKDM's
sources and digits never get it, and that the paper profiles turn it on."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from dkdm.cli import app
from dkdm.profiles import resolve
from dkdm.settings import load_settings
from training.distill.config import DistillConfig
from training.distill.sources import DatasetSource


def _asymmetric_images(n: int = 40) -> torch.Tensor:
    """uint8 images whose left and right halves differ, so a mirrored image is told apart from the original."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 6), generator=g, dtype=torch.uint8)
    images[..., :3] = 0
    images[..., 3:] |= 1  # every right-half pixel non-zero: a mirrored image has zeros on the right
    return images


def _source(images: torch.Tensor, flip: bool, seed: int = 3) -> DatasetSource:
    return DatasetSource(images, 10, batch_size=16, device=torch.device("cpu"),
                         generator=torch.Generator().manual_seed(seed),
                         noise_generator=torch.Generator().manual_seed(seed + 1), random_flip=flip)


def _mirrored(batch: torch.Tensor) -> torch.Tensor:
    """Per sample: True when the right half holds the zeros (the image was mirrored)."""
    return (batch[..., 3:] == -1).all(dim=(1, 2, 3))


def test_flip_rate_is_one_half_per_sample_and_every_batch_is_original_or_mirror():
    images = _asymmetric_images()
    as_model = images.float() / 127.5 - 1.0
    source = _source(images, flip=True)
    flipped = total = 0
    for _ in range(200):
        batch = source.next_batch().x_start
        mirrored = _mirrored(batch)
        restored = torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)
        # every restored sample is one of the set's images: a flip is a left-right mirror, nothing else
        assert (restored[:, None] == as_model[None]).flatten(2).all(-1).any(-1).all()
        flipped += int(mirrored.sum())
        total += mirrored.numel()
    # 3,200 Bernoulli(1/2) draws: sd 0.0088, so +-0.03 is 3.4 sd (the stream is seeded: this is one fixed draw).
    assert flipped / total == pytest.approx(0.5, abs=0.03)
    assert source.stats()["flipped_images"] == flipped


def test_flip_is_seeded_resumable_and_off_changes_nothing():
    images = _asymmetric_images()
    a, b = _source(images, True), _source(images, True)
    for _ in range(5):
        assert torch.equal(a.next_batch().x_start, b.next_batch().x_start)
    state = a.state_tensors()
    expected = [a.next_batch().x_start for _ in range(3)]
    resumed = _source(images, True, seed=99)
    resumed.load_state_tensors(state)
    assert all(torch.equal(resumed.next_batch().x_start, want) for want in expected)
    # Off: never mirrored, and the same (x, t, noise) stream as a source built without the argument.
    off, plain = _source(images, False), DatasetSource(
        images, 10, batch_size=16, device=torch.device("cpu"), generator=torch.Generator().manual_seed(3),
        noise_generator=torch.Generator().manual_seed(4))
    for _ in range(20):
        x, y = off.next_batch(), plain.next_batch()
        assert not _mirrored(x.x_start).any()
        assert torch.equal(x.x_start, y.x_start) and torch.equal(x.t, y.t) and torch.equal(x.noise, y.noise)


def test_dkdm_sources_never_flip():
    with pytest.raises(ValidationError, match="random_flip only applies to"):
        DistillConfig(method="dynamic", random_flip=True)
    assert DistillConfig(method="data_free", random_flip=True).random_flip


def test_profiles_flip_the_baselines_of_image_sets_and_never_digits():
    cifar = load_settings(resolve("cifar10"), {"data": {"path": "x"}})
    assert cifar.data.random_flip
    configs = {run: cifar.distill.config_for(run, random_flip=cifar.data.random_flip) for run in cifar.distill.runs}
    assert any(c.random_flip for c in configs.values())
    assert all(c.random_flip == (c.method in ("data_free", "data_limited", "data_based")) for c in configs.values())
    for name in ("default", "ci"):
        assert not load_settings(resolve(name)).data.random_flip


def test_flipping_digits_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("DKDM_DATA__RANDOM_FLIP", "true")
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    result = CliRunner().invoke(app, ["profile", "show"])
    assert result.exit_code == 2
    assert "random_flip: a mirrored digit is another glyph; digits are never flipped" in result.output
    assert len(result.output.strip().splitlines()) == 1
