"""DKDM cost in one run, at one batch size:

  (a) bare teacher forward under no_grad (bf16 autocast on CUDA)
  (b) bare student step: forward, backward, AdamW step, EMA update
  (c) one full dynamic-DKDM training step (pool gather/recycle, teacher step, dkdm_losses, AdamW, EMA, write back)

and prints c / (a + b) (target <= 1.05). Then pool preparation throughput in image-steps/s against the bare
teacher forward throughput at the preparation batch (target >= 0.9).

The three step kinds are timed in interleaved rounds and summarised by their medians, so drifting load on a
shared machine hits all of them alike. Weights are random: cost does not depend on them.

    python benchmarks/bench_distill.py --device cpu --teacher digits-teacher --student digits-student --batch-size 64
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from training.diffusion import create_diffusion
from training.distill import DiffusionTeacherStep, DistillConfig, Pool, PoolSource, prepare_in_memory
from training.distill.objective import dkdm_loss_fn
from training.models import create_model, get_preset
from training.train import Trainer
from training.train.ema import EMA
from training.train.precision import autocast_for
from training.train.rng import make_generator


def image_shape_of(preset: str) -> tuple[int, int, int]:
    cfg = get_preset(preset)
    size = cfg.get("image_size") or cfg.get("input_size")
    return (int(cfg.get("in_channels", 3)), int(size), int(size))


def randomised(preset: str, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(get_preset(preset))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default="digits-teacher")
    parser.add_argument("--student", default="digits-student")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prep-batch-size", type=int, default=None, help="teacher batch for preparation")
    parser.add_argument("--steps", type=int, default=1000, help="diffusion T")
    parser.add_argument("--rho", type=float, default=0.4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--prep-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    b = args.batch_size
    shape = image_shape_of(args.teacher)
    if image_shape_of(args.student) != shape:
        raise SystemExit(f"teacher images {shape} and student images {image_shape_of(args.student)} differ")
    diffusion = create_diffusion(steps=args.steps)
    teacher = randomised(args.teacher, 0, device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    precision = "auto"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((b, *shape), generator=gen).to(device)
    t_model = torch.randint(0, args.steps, (b,), generator=gen).to(device)

    # (a) bare teacher forward
    def teacher_forward() -> None:
        with torch.no_grad(), autocast_for(device, precision):
            teacher(x, t_model)

    # (b) bare student step (the network work any training step does, with a trivial loss)
    bare_student = randomised(args.student, 1, device).train()
    bare_opt = torch.optim.AdamW(bare_student.parameters(), lr=1e-4)
    bare_ema = EMA(bare_student, 0.9999)

    def student_step() -> None:
        bare_opt.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            out = bare_student(x, t_model)
        out.float().pow(2).mean().backward()
        bare_opt.step()
        bare_ema.update(bare_student)

    # (c) full DKDM step on a pool of the paper's size; its contents are random (cost does not depend on them)
    config = DistillConfig(method="dynamic", rho=args.rho, batch_size=b, teacher_batch_size=b, iterations=10**9,
                           log_every=10**9)
    n_pool = config.pool_config().num_entries(args.steps)
    pool = Pool(torch.randn((n_pool, *shape), generator=gen).to(device),
                torch.randint(1, args.steps + 1, (n_pool,), generator=gen).to(device), args.steps)
    step = DiffusionTeacherStep(teacher, diffusion, batch_size=b, precision=precision)
    source = PoolSource(pool, step, batch_size=b, select_all=False, select_generator=make_generator("cpu", 0, "select"),
                        noise_generator=make_generator(device, 0, "noise"))
    trainer = Trainer(randomised(args.student, 1, device), config, source, dkdm_loss_fn(diffusion), device=device)

    kinds = {"a_teacher_forward": teacher_forward, "b_student_step": student_step, "c_dkdm_step": trainer.train_step}
    for _ in range(args.warmup):
        for fn in kinds.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name, fn in kinds.items():
            times[name].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["c_dkdm_step"] / (med["a_teacher_forward"] + med["b_student_step"])
    round_ratio = statistics.median(
        c / (a + b_)
        for a, b_, c in zip(times["a_teacher_forward"], times["b_student_step"], times["c_dkdm_step"], strict=False)
    )

    # Pool preparation throughput vs the bare teacher forward at the preparation batch.
    tb = args.prep_batch_size or b
    x_prep = torch.randn((tb, *shape), generator=gen).to(device)
    t_prep = torch.randint(0, args.steps, (tb,), generator=gen).to(device)

    def prep_forward() -> None:
        with torch.no_grad(), autocast_for(device, precision):
            teacher(x_prep, t_prep)

    for _ in range(args.warmup):
        prep_forward()
    # A short-chain diffusion keeps the run small; the teacher costs the same per image-step at any T.
    prep_diffusion = create_diffusion(steps=args.steps, timestep_respacing="20")
    prep_step = DiffusionTeacherStep(teacher, prep_diffusion, batch_size=tb, precision=precision)
    prep_seconds = bare_seconds = 0.0
    evals = bare_images = 0
    pair_ratios: list[float] = []
    # Alternate preparation runs with blocks of bare forwards of the same length: each pair sees similar load
    # on a shared machine; the median of the per-pair ratios is the robust figure.
    for repeat in range(args.prep_repeats):
        prepared: list[Pool] = []
        prep_block = timed(lambda prepared=prepared, repeat=repeat: prepared.append(prepare_in_memory(
            prep_step, 8 * tb, shape, prep_diffusion.num_timesteps, batch_size=tb, dtype=torch.float32,
            device=device, generator=make_generator(device, repeat, "prepare"))), device)
        done = prepared[0].meta["teacher_evals"]
        batches = -(-done // tb)
        bare_block = timed(lambda batches=batches: [prep_forward() for _ in range(batches)], device)
        pair_ratios.append((done / prep_block) / (batches * tb / bare_block))
        prep_seconds, bare_seconds = prep_seconds + prep_block, bare_seconds + bare_block
        evals, bare_images = evals + done, bare_images + batches * tb
    prep_rate = evals / prep_seconds
    bare_rate = bare_images / bare_seconds

    print(f"device={device} teacher={args.teacher} student={args.student} batch={b} T={args.steps} "
          f"pool={n_pool} rounds={args.rounds} threads={torch.get_num_threads()}")
    for name, value in med.items():
        print(f"  {name:<20} {value * 1e3:9.2f} ms (median)")
    print(f"  ratio c/(a+b)        {ratio:9.3f}   (target <= 1.05; of medians; median per-round ratio "
          f"{round_ratio:.3f})")
    print(f"  prep throughput      {prep_rate:9.0f} image-steps/s at teacher batch {tb} ({evals} evals)")
    print(f"  bare teacher forward {bare_rate:9.0f} images/s")
    print(f"  ratio prep/bare      {statistics.median(pair_ratios):9.3f}   (target >= 0.9; median of "
          f"{len(pair_ratios)} alternating pairs, totals give {prep_rate / bare_rate:.3f})")


if __name__ == "__main__":
    main()
