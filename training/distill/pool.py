"""The dynamic-iterative pool: preparation by the teacher (the paper's Sec. 3.3), resumable, stored as a
safetensors artifact.

An entry is (s, x): s is the index of the teacher step that produced x (s = T means fresh noise); the next time
the entry is used, x is fed to the networks at index s - 1. Preparation starts every entry at s = T and walks it
down to its own end index e ~ U{1..T-1}, in teacher batches of mixed timesteps: every step by default (the paper),
or in at most K hops on a respaced grid (`PoolConfig.prep`, pool_prep.py).

Under a job of W processes each rank prepares its own round(rho*T)*b entries (rank-distinct seeds), as every
process of the official code keeps its own pool; the artifact holds the W shards one after the other (rank r's
rows at [r*N, (r+1)*N)) and records `world_size`, and `load_pool` gives rank r its own shard back.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from tqdm.auto import tqdm

from training.diffusion import GaussianDiffusion
from training.distill.config import PoolConfig
from training.distill.pool_prep import Walk
from training.distill.teacher import DiffusionTeacherStep, TeacherStep
from training.train.distributed import DistContext
from training.train.rng import make_generator
from training.train.state import atomic_save_tensors

POOL_FORMAT = "dkdm-pool/1"
PARTIAL_FORMAT = "dkdm-pool-partial/1"
POOL_WORK_METRIC = "pool_teacher_image_steps"  # the MLflow metric of a preparation's teacher work
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PoolError(ValueError):
    """A pool file is missing, malformed or does not fit the run."""


@dataclass
class Pool:
    """Pool tensors held in place: x (N, *image_shape) in the storage dtype, s (N,) int64."""

    x: Tensor
    s: Tensor
    num_timesteps: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.s.shape[0]:
            raise PoolError(f"pool x has {self.x.shape[0]} entries but s has {self.s.shape[0]}")
        if self.s.dtype != torch.int64:
            raise PoolError(f"pool s must be int64, got {self.s.dtype}")

    def __len__(self) -> int:
        return self.x.shape[0]



def pool_nbytes(num_entries: int, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes the pool's entries take (plus 8 per int64 timestep)."""
    per = int(torch.tensor([], dtype=dtype).element_size())
    numel = 1
    for d in shape:
        numel *= int(d)
    return num_entries * (numel * per + 8)


def noise_pool(num_entries: int, image_shape: tuple[int, ...], num_timesteps: int, *, dtype: torch.dtype,
               device: torch.device, generator: torch.Generator) -> Pool:
    """A pool of pure noise at s = T (the starting batch of iterative distillation)."""
    x = _noise_rows(num_entries, image_shape, dtype=dtype, device=device, generator=generator)
    s = torch.full((num_entries,), num_timesteps, dtype=torch.int64, device=device)
    return Pool(x, s, num_timesteps)


def prepare_in_memory(step: TeacherStep, num_entries: int, image_shape: tuple[int, ...], num_timesteps: int, *,
                      batch_size: int, dtype: torch.dtype, device: torch.device,
                      generator: torch.Generator, walk: Walk | None = None) -> Pool:
    """A prepared pool without files (shuffled distillation's single batch, tests)."""
    state = _start_state(num_entries, image_shape, num_timesteps, batch_size=batch_size, dtype=dtype,
                         device=device, generator=generator)
    state = run_preparation(step, state, batch_size=batch_size, ctx=DistContext(device=device), walk=walk)
    return Pool(state.x, state.s, num_timesteps, {"teacher_evals": state.evals})


def _noise_rows(n: int, image_shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device,
                generator: torch.Generator, chunk: int = 4096) -> Tensor:
    # Drawn in row chunks so a half-precision pool never needs its float32 copy in memory at once.
    out = torch.empty((n, *image_shape), dtype=dtype, device=device)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        out[start : start + rows] = torch.randn((rows, *image_shape), generator=generator,
                                                device=generator.device).to(device, dtype)
    return out


@dataclass
class _PrepState:
    """Everything needed to continue a preparation exactly: pool, end indices, the in-flight slots, the RNG."""

    x: Tensor
    s: Tensor
    e: Tensor
    hops: Tensor  # teacher calls each entry has had (its position on its grid)
    slots: Tensor  # entry indices in flight (at most one teacher batch)
    cursor: int  # position in `order` of the next entry not yet started
    evals: int  # image-steps done so far
    generator: torch.Generator
    order: Tensor = field(init=False)

    def __post_init__(self) -> None:
        # Longest chains start first, so the last in-flight entries all finish within a few steps and the
        # final, part-filled teacher batches are few (the tail would otherwise waste up to T half-empty batches).
        self.order = torch.argsort(self.e, stable=True)

    def tensors(self, batch_size: int) -> dict[str, Tensor]:
        padded = torch.full((batch_size,), -1, dtype=torch.int64)
        padded[: self.slots.numel()] = self.slots.cpu()
        return {
            "x": self.x, "s": self.s, "e": self.e, "hops": self.hops, "slots": padded,
            "counters": torch.tensor([self.cursor, self.evals], dtype=torch.int64),
            "generator": self.generator.get_state(),
        }


def _start_state(num_entries: int, image_shape: tuple[int, ...], num_timesteps: int, *, batch_size: int,
                 dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> _PrepState:
    if num_timesteps < 2:
        raise PoolError(f"pool preparation needs T >= 2 steps, got T={num_timesteps}")
    x = _noise_rows(num_entries, image_shape, dtype=dtype, device=device, generator=generator)
    s = torch.full((num_entries,), num_timesteps, dtype=torch.int64, device=device)
    e = torch.randint(1, num_timesteps, (num_entries,), generator=generator, device=generator.device).to(device)
    first = min(batch_size, num_entries)
    hops = torch.zeros_like(s)
    state = _PrepState(x, s, e, hops, torch.empty(0, dtype=torch.int64, device=device), first, 0, generator)
    state.slots = state.order[:first].clone()
    return state


def run_preparation(
    step: TeacherStep,
    state: _PrepState,
    *,
    batch_size: int,
    ctx: DistContext,
    progress: bool = False,
    on_save: Any = None,
    save_every_s: float = 300.0,
    walk: Walk | None = None,
) -> _PrepState:
    """Advance every entry from its s down to its end e, `batch_size` entries per teacher call.

    In-flight slots that finish are refilled from the next unstarted entries (longest chains first), so
    batches stay full, and hold mixed timesteps, until a short tail. `on_save(state)` is called collectively
    every `save_every_s` seconds. `walk` None (or the paper's) moves every entry one step per teacher call.
    """
    total = _remaining_work(state, walk) + state.evals
    bar = tqdm(total=total, initial=state.evals, unit="img-step", desc="prepare pool",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    # All ranks must enter the save/stop collectives at the same iteration counts.
    sync_every = 16 if ctx.enabled else 1
    last_save = time.monotonic()
    iteration = 0
    while True:
        slots = state.slots
        if slots.numel():
            x_in = state.x[slots].float()
            s_now = state.s[slots]
            noise = torch.randn(x_in.shape, generator=state.generator, device=state.generator.device)
            noise = noise.to(x_in.device)
            out, x_step = step(x_in, s_now - 1, noise)
            x_next, target = (x_step, s_now - 1) if walk is None else walk.advance(
                x_in, out, x_step, s_now, state.e[slots], state.hops[slots], noise)
            state.x[slots] = x_next.to(state.x.dtype)
            state.s[slots] = target
            state.hops[slots] += 1
            finished = target <= state.e[slots]
            n_finished = int(finished.sum())
            state.evals += slots.numel()
            bar.update(slots.numel())
            if n_finished:
                stop = min(state.cursor + n_finished, state.x.shape[0])
                refill = state.order[state.cursor : stop]
                state.slots = torch.cat([slots[~finished], refill])
                state.cursor = stop
        iteration += 1
        if iteration % sync_every:
            continue
        flags = torch.tensor([int(state.slots.numel() > 0), 0], device=ctx.device)
        if ctx.is_main and on_save is not None and time.monotonic() - last_save >= save_every_s:
            flags[1] = 1
        ctx.all_reduce_sum(flags)
        if int(flags[0]) == 0:
            break
        if int(flags[1]) and on_save is not None:
            on_save(state)
            last_save = time.monotonic()
    bar.close()
    return state


def _remaining_work(state: _PrepState, walk: Walk | None) -> int:
    from training.distill.pool_prep import hop_count

    if walk is None or walk.max_hops is None:
        return int((state.s - state.e).clamp(min=0).sum())
    return int((hop_count(state.e, walk.num_timesteps, walk.max_hops) - state.hops).clamp(min=0).sum())


def _meta(config: PoolConfig, diffusion: GaussianDiffusion, image_shape: tuple[int, ...], per_rank: int,
          ctx: DistContext) -> dict[str, Any]:
    return {
        "num_timesteps": diffusion.num_timesteps,
        "diffusion": diffusion.config.to_dict(),
        "image_shape": list(image_shape),
        "per_rank_entries": per_rank,
        "world_size": ctx.world_size,
        "num_entries": per_rank * ctx.world_size,
        "rho": config.rho,
        "batch_size": config.batch_size,
        "teacher_batch_size": config.teacher_batch_size,
        "pool_dtype": config.pool_dtype,
        "clip_denoised": config.clip_denoised,
        "seed": config.seed,
        "pool_prep": config.prep.model_dump(mode="json"),
    }


def partial_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".partial")


def _load_partial(path: Path, expected: dict[str, Any], ctx: DistContext, generator: torch.Generator,
                  device: torch.device) -> _PrepState:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("dkdm", "{}"))
        if meta.get("format") != PARTIAL_FORMAT or meta.get("settings") != expected:
            raise PoolError(
                f"partial pool {path} was started with different settings; delete it or pass resume=False"
            )
        row = {k: f.get_slice(k)[ctx.rank] for k in ("x", "s", "e", "hops", "slots", "counters", "generator")}
    generator.set_state(row["generator"])
    slots = row["slots"][row["slots"] >= 0]
    cursor, evals = (int(v) for v in row["counters"])
    return _PrepState(row["x"].to(device), row["s"].to(device), row["e"].to(device), row["hops"].to(device),
                      slots.to(device), cursor, evals, generator)


def _write_stacked(path: Path, ctx: DistContext, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Gather each per-rank tensor to rank 0 (stacked over ranks) and let rank 0 write them atomically."""
    stacked = {k: ctx.gather_stacked(v) for k, v in tensors.items()}
    if ctx.is_main:
        atomic_save_tensors(path, {k: v for k, v in stacked.items() if v is not None}, meta)
    ctx.barrier()


def prepare_pool(
    teacher: nn.Module,
    diffusion: GaussianDiffusion,
    config: PoolConfig,
    out_path: str | Path,
    *,
    image_shape: tuple[int, ...],
    device: torch.device | str,
    generator_seed: int | None = None,
    progress: bool = True,
    resume: bool = True,
    ctx: DistContext | None = None,
    teacher_step: TeacherStep | None = None,
) -> Path:
    """Prepare the pool (each process its own round(rho*T)*b entries, by `config.prep`) and write `out_path`
    (safetensors: x, s; metadata: the settings, `world_size` and the teacher image-steps spent).

    Partial progress is saved atomically every `config.save_every_s` seconds to `<out_path>.partial` and
    picked up when `resume` is true; an existing finished artifact with the same settings is reused.
    `teacher_step` overrides the pixel teacher step (latent DKDM supplies its own).
    """
    out_path = Path(out_path)
    ctx = ctx or DistContext(device=torch.device(device))
    dev = torch.device(device)
    image_shape = tuple(int(v) for v in image_shape)
    per_rank = config.num_entries(diffusion.num_timesteps)
    settings = _meta(config, diffusion, image_shape, per_rank, ctx)
    seed = config.seed if generator_seed is None else generator_seed
    settings["seed"] = seed

    if resume and out_path.is_file():
        existing = read_pool_meta(out_path)
        if existing.get("settings") == settings:
            return out_path
        raise PoolError(f"{out_path} exists with different settings; remove it or choose another output path")

    step = teacher_step or DiffusionTeacherStep(
        teacher, diffusion, clip_denoised=config.clip_denoised, batch_size=config.teacher_batch_size
    )
    generator = make_generator(dev, seed, "prepare", ctx.rank)
    partial = partial_path(out_path)
    if resume and partial.is_file():
        state = _load_partial(partial, settings, ctx, generator, dev)
    else:
        state = _start_state(per_rank, image_shape, diffusion.num_timesteps, batch_size=config.teacher_batch_size,
                             dtype=DTYPES[config.pool_dtype], device=dev, generator=generator)

    def save_partial(current: _PrepState) -> None:
        _write_stacked(partial, ctx, current.tensors(config.teacher_batch_size),
                       {"format": PARTIAL_FORMAT, "settings": settings})

    state = run_preparation(step, state, batch_size=config.teacher_batch_size, ctx=ctx, progress=progress,
                            on_save=save_partial, save_every_s=config.save_every_s, walk=Walk(config.prep, diffusion))
    per_rank_work = torch.zeros(ctx.world_size, dtype=torch.int64, device=ctx.device)
    per_rank_work[ctx.rank] = state.evals
    ctx.all_reduce_sum(per_rank_work)
    final_meta = {"format": POOL_FORMAT, "settings": settings, "teacher_image_steps": int(per_rank_work.sum()),
                  "teacher_image_steps_per_rank": [int(v) for v in per_rank_work.cpu()]}
    stacked = {"x": ctx.gather_stacked(state.x), "s": ctx.gather_stacked(state.s)}
    if ctx.is_main:
        tensors = {k: v.reshape(-1, *v.shape[2:]) for k, v in stacked.items() if v is not None}
        atomic_save_tensors(out_path, tensors, final_meta)
        partial.unlink(missing_ok=True)
    ctx.barrier()
    return out_path


def read_pool_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PoolError(f"pool file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dkdm", "{}"))
            keys = set(f.keys())
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise PoolError(f"pool file {path} is not a readable safetensors file: {err}") from None
    if meta.get("format") != POOL_FORMAT or not {"x", "s"} <= keys:
        raise PoolError(f"{path} is not a dkdm pool (expected format {POOL_FORMAT} with tensors x and s)")
    return meta


def check_pool_world(path: str | Path, meta: dict[str, Any], world_size: int) -> None:
    """Refuse, naming both sizes, a pool prepared by a job of another number of processes."""
    prepared = int(meta["settings"].get("world_size", 1))
    if prepared != world_size:
        raise PoolError(f"pool {path} was prepared by {prepared} process(es) but this job has {world_size}; "
                        f"prepare it again with {world_size} (dkdm prepare-pool under the same world size)")


def load_pool(path: str | Path, *, device: torch.device | str = "cpu", ctx: DistContext | None = None,
              rank: int | None = None, world_size: int | None = None) -> Pool:
    """Rank `rank`'s own pool (round(rho*T)*b entries) from an artifact prepared by a job of `world_size`
    processes (both default to `ctx`'s, or one process). A pool made for another world size is refused, naming
    both: re-sharding would change every rank's pool size and so the method's rho."""
    path = Path(path)
    meta = read_pool_meta(path)
    ctx = ctx or DistContext()
    rank = ctx.rank if rank is None else rank
    world_size = ctx.world_size if world_size is None else world_size
    check_pool_world(path, meta, world_size)
    if not 0 <= rank < world_size:
        raise PoolError(f"rank {rank} is outside a job of {world_size} processes")
    with safe_open(str(path), framework="pt") as f:
        total = f.get_slice("s").get_shape()[0]
        size = total // world_size
        if size * world_size != total:
            raise PoolError(f"pool {path} has {total} entries, not {world_size} equal shards")
        lo, hi = rank * size, (rank + 1) * size
        x = f.get_slice("x")[lo:hi]
        s = f.get_slice("s")[lo:hi]
    return Pool(x.to(device), s.to(device), int(meta["settings"]["num_timesteps"]), meta)
