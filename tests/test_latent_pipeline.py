"""Latent-space profiles: settings of the CPU and paper profiles, the stages' image <-> latent path, the import of a
released-layout LDM checkpoint, and the `latent-ci` profile through `dvc repro` (slow)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from dkdm import profiles
from dkdm.cli import app
from dkdm.errors import DkdmError
from dkdm.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
LATENT_PROFILES = ("latent", "latent-ci", "celebahq256-latent", "ffhq256-latent")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """An empty project folder, no DKDM_* from the caller, tracking off (these tests check files, not MLflow)."""
    for key in list(os.environ):
        if key.startswith("DKDM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DKDM_TRACKING__ENABLED", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _profile(name: str, **changes: object) -> dict:
    data = yaml.safe_load((profiles.packaged_dir() / f"{name}.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return data


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("name", LATENT_PROFILES)
def test_latent_profiles_load_and_validate(name, monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_settings(profiles.resolve(name))
    assert (s.profile, s.space) == (name, "latent")
    assert s.distill.rho == 4.0 and not s.distill.clip_denoised
    assert {spec.method for spec in s.distill.runs.values()} >= {"dynamic", "data_free"}
    assert s.evaluate.use_ddim and s.evaluate.eta == 0.0
    assert not s.diffusion.learn_sigma and s.diffusion.noise_schedule == "linear"


@pytest.mark.parametrize(("name", "teacher", "batch", "lr", "iterations", "synthetic"), [
    ("celebahq256-latent", "ldm-celebahq-274M-teacher", 48, 9.6e-5, 410_000, 25_000),
    ("ffhq256-latent", "ldm-ffhq-274M-teacher", 42, 8.4e-5, 640_000, 60_000),
])
def test_paper_latent_profiles_follow_table_7(name, teacher, batch, lr, iterations, synthetic, monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_settings(profiles.resolve(name))
    latent = s.teacher.latent
    assert (s.scale, s.teacher.source, s.teacher.preset, s.distill.student) == (
        "paper", "import", teacher, "ldm-86M-student")
    assert (latent.linear_start, latent.linear_end, latent.scale_factor, s.diffusion.steps) == (
        0.0015, 0.0195, 1.0, 1000)
    assert (latent.first_stage.preset, latent.first_stage.source) == ("vq-f4", "import")
    t = s.distill.train
    assert (t.batch_size, t.lr, t.iterations, t.ema_rate, t.ema_warmup) == (batch, lr, iterations, 0.9999, True)
    assert (s.evaluate.respacing, s.evaluate.num_samples, s.features.kind) == ("200", 50_000, "inception")
    assert (s.reference.respacing, s.reference.num_samples) == ("100", synthetic)  # Table 4: DDIM-100 sets
    assert (s.data.dataset, s.data.image_size, s.data.channels) == ("folder", 256, 3)


BAD_LATENT = [
    ({"distill.clip_denoised": True}, "distill.clip_denoised"),
    ({"teacher.preset": "ldm-unet-small"}, "teacher.preset"),          # 16x16 latents, the first stage makes 4x4
    ({"diffusion.learn_sigma": True}, "diffusion"),
    ({"evaluate.respacing": "500"}, "evaluate.respacing"),              # more DDIM steps than T
    ({"teacher.latent.first_stage.preset": "ldm-digits-student"}, "teacher.latent.first_stage.preset"),
    ({"teacher.latent.linear_end": 0.001}, "linear_start"),
    ({"space": "pixel"}, "teacher.latent"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_LATENT, ids=[b[1] for b in BAD_LATENT])
def test_bad_latent_settings_fail_in_one_line(workdir, changes, field):
    _write(workdir / "params.yaml", _profile("latent-ci", **changes))
    result = CliRunner().invoke(app, ["data"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], lines
    assert not (workdir / "outputs").exists(), "nothing may be written on a bad setting"


def test_pixel_profiles_have_no_latent_section(workdir):
    assert load_settings(profiles.resolve("default")).space == "pixel"
    path = _write(workdir / "pixel.yaml", _profile("ci", **{"teacher.latent": {}}))
    with pytest.raises(DkdmError, match="teacher.latent: set only in latent profiles"):
        load_settings(path)


@pytest.mark.parametrize("name", ["celebahq256-latent", "ffhq256-latent"])
@pytest.mark.parametrize("command", ["data", "autoencoder", "teacher"])
def test_paper_profiles_without_the_checkpoint_exit_2(workdir, name, command):
    result = CliRunner().invoke(app, [command, "--profile", name])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint" in lines[0] and "does not exist" in lines[0], lines
    assert "model.ckpt" in lines[0]


# --------------------------------------------------------------------------- image <-> latent path


def test_nearest_upsample_then_area_decode_is_exact():
    """The CPU profiles upsample 8x8 digits to 16x16 for the first stage; decoding averages back. With an identity
    'first stage' the round trip must return the very bytes (no resampling blur enters the evaluation)."""
    from dkdm.spaces.latent import decode_to_images, upsample
    from training.data import to_model_range

    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    x = upsample(to_model_range(images), 16)
    assert x.shape == (5, 1, 16, 16)

    class Identity:
        def decode(self, z, force_not_quantize=False):
            return z

    class Unscaled:
        def decode_first_stage(self, first_stage, z):
            return first_stage.decode(z)

    # to_model_range/from_model_range truncate, so values are exact only up to the uint8 rounding of +-1 LSB.
    out = decode_to_images(Identity(), Unscaled(), x, image_size=8, batch_size=2, device="cpu")
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.abs(out.astype(int) - images.astype(int)).max() <= 1


def test_latent_samples_do_not_depend_on_the_batch_size():
    from dkdm.spaces.latent import sample_latents
    from training.diffusion.ldm import LatentDiffusion
    from training.models import create_model, get_preset

    torch.manual_seed(0)  # only the weights of this throw-away network
    model = create_model(get_preset("ldm-digits-student")).eval()
    diffusion = LatentDiffusion(20, 0.054, 0.702)
    kwargs = dict(shape=(3, 4, 4), steps="5", use_ddim=True, eta=0.0, seed=3, device="cpu")
    a = sample_latents(model, diffusion, 5, batch_size=5, **kwargs)
    b = sample_latents(model, diffusion, 5, batch_size=2, **kwargs)
    # Same noise per sample; only float summation order inside the network may differ with the batch.
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[0], a[1])


def test_first_stage_training_learns_and_uses_its_codebook():
    from training.models import create_model, get_preset
    from training.train.first_stage import FirstStageTrainConfig, train_first_stage
    from training.train.tracker import ListTracker

    torch.manual_seed(0)
    model = create_model(get_preset("vq-f4-digits"))
    g = torch.Generator().manual_seed(0)
    images = (torch.rand((32, 1, 16, 16), generator=g) > 0.7).float() * 2 - 1
    tracker = ListTracker()
    result = train_first_stage(model, images, FirstStageTrainConfig(iterations=30, batch_size=16, lr=2e-3,
                                                                    log_every=10, codebook_restart_every=10),
                               device="cpu", tracker=tracker)
    losses = [v for _, v in tracker.series("train/loss")]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert result.restarted_codes >= 128, "step 0 must seed every code from encoder outputs"
    assert result.codes_used > 16, "restarts should keep many codes alive"


# --------------------------------------------------------------------------- import of a released-layout checkpoint


def _released_checkpoint(path: Path, diffusion) -> Path:
    from training.models import create_model, get_preset
    from training.models.ldm_checkpoint import ldm_checkpoint_state_dict

    torch.manual_seed(0)  # random weights: only the layout matters here
    unet, ema = create_model(get_preset("ldm-digits-teacher")), create_model(get_preset("ldm-digits-teacher"))
    vq = create_model(get_preset("vq-f4-digits"))
    state = ldm_checkpoint_state_dict(unet, diffusion, ema_unet=ema, first_stage=vq)
    torch.save({"state_dict": state}, path)
    return path


def test_released_layout_checkpoint_imports_through_the_stages(workdir):
    from dkdm.spaces.latent import AUTOENCODER_INFO, FIRST_STAGE_FILE, load_latent_model
    from training.diffusion.ldm import LatentDiffusion
    from training.models import create_model, get_preset, load_checkpoint

    ckpt = _released_checkpoint(workdir / "model.ckpt", LatentDiffusion(20, 0.054, 0.702))
    params = _profile("latent-ci", **{"teacher.source": "import", "teacher.checkpoint": str(ckpt),
                                      "teacher.latent.first_stage.source": "import",
                                      "teacher.latent.scale_factor": 1.0})
    _write(workdir / "params.yaml", params)
    runner = CliRunner()
    for command in ("data", "autoencoder", "teacher"):
        result = runner.invoke(app, [command])
        assert result.exit_code == 0, (command, result.output, result.stderr)
    assert json.loads(AUTOENCODER_INFO.read_text())["scale_factor"] == 1.0
    teacher, diffusion, meta = load_latent_model(Path("outputs/teacher/teacher.safetensors"), "cpu")
    assert meta.diffusion_config["space"] == "latent" and diffusion.num_timesteps == 20
    ema = torch.load(ckpt, weights_only=True)["state_dict"]
    from training.models.ldm_checkpoint import ema_key

    name, value = next(iter(teacher.state_dict().items()))
    assert torch.equal(value, ema[ema_key(name)]), "the EMA weights are imported by default"
    vq, _ = load_checkpoint(FIRST_STAGE_FILE, ema=False)
    reference = create_model(get_preset("vq-f4-digits"))
    reference.load_state_dict({k[len("first_stage_model."):]: v for k, v in ema.items()
                               if k.startswith("first_stage_model.")})
    assert all(torch.equal(a, b)
               for a, b in zip(vq.state_dict().values(), reference.state_dict().values(), strict=False))

    # `dkdm sample` on the latent teacher: DDIM in latent space, decoded by the profile's first stage, deterministic.
    for name in ("a", "b"):
        result = runner.invoke(app, ["sample", "outputs/teacher/teacher.safetensors", "-n", "6", "--ddim",
                                     "--steps", "4", "--batch-size", "4", "--out", f"{name}.npz"])
        assert result.exit_code == 0, (result.output, result.stderr)
    assert "4 DDIM steps (eta 0.0), decoded" in result.output
    first, second = np.load("a.npz")["arr_0"], np.load("b.npz")["arr_0"]
    assert first.shape == (6, 8, 8, 1) and first.dtype == np.uint8 and np.array_equal(first, second)
    result = runner.invoke(app, ["sample", "outputs/teacher/teacher.safetensors", "--ddim", "--steps", "all"])
    assert result.exit_code == 2 and "--steps: 'all' is not a step count" in result.stderr

    # A checkpoint of another schedule is refused in one line naming it, before anything is written.
    _write(workdir / "params.yaml", {**params, "teacher": {**params["teacher"], "latent": {
        **params["teacher"]["latent"], "linear_end": 0.5}}})
    result = runner.invoke(app, ["teacher"])
    assert result.exit_code == 2, result.output
    assert "schedule buffers differ" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- latent-ci through dvc repro

@pytest.fixture(scope="module")
def latent_pipeline(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipeline_helpers import repro_profile

    return repro_profile(tmp_path_factory.mktemp("latent-e2e") / "repo", "latent-ci")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_latent_ci_profile_dvc_repro(latent_pipeline):
    from pipeline_helpers import run as _run

    repo, dvc, repro = latent_pipeline
    runs = ["dynamic", "data_free"]
    for path in ["outputs/autoencoder/first_stage.safetensors", "outputs/autoencoder/info.json",
                 "outputs/teacher/teacher.safetensors", "outputs/features/real_stats.safetensors",
                 "outputs/reference/teacher_samples.safetensors", "outputs/pool/pool.safetensors",
                 "outputs/report/report.md", "outputs/report/summary.json"]:
        assert (repo / path).is_file(), path
    info = json.loads((repo / "outputs/autoencoder/info.json").read_text())
    assert info["latent_shape"] == [3, 4, 4] and info["scale_factor"] > 0
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"data", "first_stage@autoencoder", "teacher", "features", "reference", "pool", "report"} | {
        f"distill@{r}" for r in runs} | {f"evaluate@{r}" for r in runs} <= set(lock)

    # The pool holds 4*T*b = 4*20*8 half-precision latents, and its memory is printed by the stage.
    from safetensors import safe_open

    with safe_open(str(repo / "outputs/pool/pool.safetensors"), framework="pt") as f:
        x = f.get_tensor("x")
    assert x.shape == (640, 3, 4, 4) and x.dtype == torch.float16
    assert "640 latents (3, 4, 4) in float16 = 66560 bytes" in repro.stdout

    for run in runs:
        sidecar = json.loads((repo / f"outputs/students/{run}/student.json").read_text())
        assert sidecar["diffusion_config"]["space"] == "latent"
        assert sidecar["model_config"]["family"] == "ldm-unet"
        record = json.loads((repo / f"outputs/students/{run}/mlflow_run.json").read_text())
        metrics = json.loads((repo / f"outputs/evaluation/{run}/metrics.json").read_text())
        for key in ("fd_digits", "fd_digits_teacher", "precision_digits", "recall_digits", "peak_memory_mb",
                    "train_seconds_per_100_iters"):
            assert key in metrics and metrics[key] == metrics[key], f"{run}: {key}"  # present and not NaN
        # The first stage was loaded with a counter on its encoder: no image is encoded by DKDM nor by data-free
        # training (the decoder runs only in evaluation, the encoder never after the teacher stage).
        assert record["first_stage_encoder_calls"] == 0 and metrics["first_stage_encoder_calls"] == 0.0, run
        # Periodic FD' (eval_every 6 of 12, select_metric fd_digits_teacher) chose one of the two EMA states.
        assert record["best_step"] in (6, 12) and sidecar["provenance"]["best_step"] == record["best_step"], run
    assert metrics["sampling_steps"] == 10.0 and metrics["num_samples"] == 64.0

    shown = _run([dvc, "metrics", "show", "--json"], repo, 120)
    assert "fd_digits_noise_floor" in shown.stdout
    status = _run([dvc, "status", "dvc.yaml"], repo, 120)  # this pipeline only, not experiments/*
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout
    report = (repo / "outputs/report/report.md").read_text()
    assert "| dynamic |" in report and "| data_free |" in report
