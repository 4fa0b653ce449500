"""torchrun helpers: one context object instead of global rank lookups; gather-to-rank-0 for files only rank 0
writes."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    """Where this process sits. `world_size == 1` means plain single-process (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, value: Tensor) -> Tensor:
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def broadcast_object(self, obj: object) -> object:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order, on every rank (small picklable values: hashes, counts)."""
        if not self.enabled:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_stacked(self, tensor: Tensor, *, chunk_rows: int = 4096) -> Tensor | None:
        """Stack every rank's `tensor` (same shape on all ranks) into (world, ...) on CPU at rank 0; None elsewhere.

        Rows are sent in chunks so rank 0 never holds more than world x chunk of device memory at once
        (pools can be gigabytes).
        """
        if not self.enabled:
            return tensor.detach().cpu().unsqueeze(0)
        tensor = tensor.detach().contiguous()
        flat = tensor.reshape(tensor.shape[0], -1) if tensor.ndim else tensor.reshape(1, 1)
        out = (
            torch.empty((self.world_size, *flat.shape), dtype=flat.dtype) if self.is_main else None
        )
        rows = flat.shape[0]
        for start in range(0, max(rows, 1), chunk_rows):
            # NCCL only moves device tensors; gloo only host ones.
            piece = flat[start : start + chunk_rows].to(self.device).contiguous()
            bucket = [torch.empty_like(piece) for _ in range(self.world_size)] if self.is_main else None
            dist.gather(piece, bucket, dst=0)
            if out is not None and bucket is not None:
                for r, got in enumerate(bucket):
                    out[r, start : start + piece.shape[0]] = got.cpu()
        if out is None:
            return None
        return out.reshape(self.world_size, *tensor.shape)


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun process group when RANK/WORLD_SIZE are set (NCCL on CUDA, gloo on CPU); else single process.

    On CUDA each process takes the GPU `LOCAL_RANK`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    requested = torch.device(device) if device is not None else None
    use_cuda = (requested.type == "cuda") if requested is not None else torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = requested if requested is not None else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
