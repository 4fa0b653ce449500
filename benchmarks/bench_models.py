"""Forward and training-step throughput (images/s) of the model presets.

    python benchmarks/bench_models.py --device cpu --batch-size 64              # CPU presets
    python benchmarks/bench_models.py --device cuda --batch-size 128            # CPU + paper presets, bf16
    python benchmarks/bench_models.py --presets cifar10-57M,dit-19M --steps 20

Forward: `model(x, t)` under inference mode. Training step: forward + MSE backward + AdamW step. On CUDA the model
runs under bf16 autocast with channels_last activations and weights (as training does); on CPU in float32.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.models import count_parameters, create_model, get_preset, get_preset_info  # noqa: E402

CPU_PRESETS = ["ci-student", "ci-teacher", "digits-dit-student", "digits-student", "digits-teacher"]
PAPER_PRESETS = ["cifar10-14M", "cifar10-24M", "cifar10-32M", "cifar10-44M", "cifar10-57M", "dit-19M",
                 "celeba64-57M", "celeba64-295M"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def bench_preset(name: str, *, device: torch.device, batch_size: int, steps: int, warmup: int,
                 bf16: bool, channels_last: bool, compile_model: bool, seed: int) -> dict[str, float | int | str]:
    config = get_preset(name)
    info = get_preset_info(name)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    with torch.device(device):
        model = create_model(config)
    size = info.config.get("image_size") or info.config["input_size"]
    x = torch.randn(batch_size, info.config["in_channels"], size, size, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch_size,), generator=gen).to(device)
    target = torch.randn(batch_size, 2 * info.config["in_channels"], size, size, generator=gen).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    net = torch.compile(model) if compile_model else model

    def forward() -> None:
        with torch.inference_mode(), autocast:
            net(x, t)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def train_step() -> None:
        with autocast:
            loss = torch.nn.functional.mse_loss(net(x, t).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Warm both paths before any measurement so that cudnn's algorithm search (and its workspaces) is not counted.
    model.eval()
    _timed(forward, warmup, 0, device)
    model.train()
    _timed(train_step, warmup, 0, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    fwd_s = _timed(forward, steps, 1, device)
    model.train()
    train_s = _timed(train_step, steps, 1, device)
    result: dict[str, float | int | str] = {
        "preset": name, "params": count_parameters(model), "batch": batch_size,
        "forward_img_s": batch_size * steps / fwd_s, "train_img_s": batch_size * steps / train_s,
    }
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--presets", default="", help="comma-separated names (default: CPU presets, plus the paper "
                                                      "presets on CUDA or with --paper)")
    parser.add_argument("--paper", action="store_true", help="include the paper presets on CPU")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (minutes of warm-up on a UNet)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.presets:
        names = [n.strip() for n in args.presets.split(",") if n.strip()]
        for name in names:  # unknown names fail before any work
            try:
                get_preset_info(name)
            except ValueError as err:
                parser.error(str(err))
    else:
        names = CPU_PRESETS + (PAPER_PRESETS if device.type == "cuda" or args.paper else [])
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    bf16 = on_cuda and not args.fp32
    label = torch.cuda.get_device_name(device) if on_cuda else f"CPU ({torch.get_num_threads()} threads)"
    mode = ("bf16 autocast + channels_last" if bf16 else "float32") + (" + torch.compile" if args.compile else "")
    print(f"device: {label}; {mode}; batch {args.batch_size}; "
          f"{args.steps} timed steps after {args.warmup} warm-up; torch {torch.__version__}")
    header = f"{'preset':<20} {'params':>12} {'forward img/s':>14} {'train img/s':>12}" + \
             (f" {'peak MiB':>9}" if on_cuda else "")
    print(header)
    results = []
    for name in names:
        r = bench_preset(name, device=device, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                         bf16=bf16, channels_last=on_cuda, compile_model=args.compile, seed=args.seed)
        results.append(r)
        line = f"{name:<20} {r['params']:>12,} {r['forward_img_s']:>14,.1f} {r['train_img_s']:>12,.1f}"
        print(line + (f" {r['peak_mem_mb']:>9,.0f}" if on_cuda else ""), flush=True)
        del r
        if on_cuda:
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": label, "bf16": bf16, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
