"""One job over many processes. A command that can run distributed asks `launch_if_requested` first: when the
profile wants `runtime.nproc_per_node` x `runtime.nnodes` > 1 processes and no launcher started this one, the
command relaunches itself through torch's elastic launcher (what `torchrun` runs) and waits; otherwise it does the
work here, inside `distributed_job`, which joins the process group torchrun prepared (or none, for one process).

Under a `torchrun` the user typed, torchrun's own options decide the world size and the settings' are ignored.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dkdm.errors import EXIT_USAGE, DkdmError

if TYPE_CHECKING:
    from dkdm.console import Context
    from dkdm.settings import RuntimeSettings
    from training.train.distributed import DistContext


def under_launcher() -> bool:
    """True inside a process that torchrun (or our relaunch) started: it set the rank variables."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_args(runtime: RuntimeSettings, argv: Sequence[str]) -> list[str]:
    """The torchrun command line (without the program name) that runs `python -m dkdm <argv>` as one job."""
    args = [f"--nproc-per-node={runtime.nproc_per_node}", f"--max-restarts={runtime.max_restarts}"]
    if runtime.nnodes > 1:
        args += [f"--nnodes={runtime.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={runtime.rdzv_endpoint}",
                 f"--rdzv-id={runtime.rdzv_id}"]
    else:
        args.append("--standalone")  # a free local port; several jobs on one host never collide
    return [*args, "--module", "dkdm", *argv]


def launcher_args(runtime: RuntimeSettings, argv: Sequence[str]):  # -> argparse.Namespace (torch's parser)
    """torchrun's parsed arguments for this job. The command's own arguments are set after parsing, not parsed:
    torchrun's parser would read a dkdm option such as `--run` as an abbreviation of its `--run-path`."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(torchrun_args(runtime, []))
    args.training_script_args = list(argv)
    return args


def launch_if_requested(runtime: RuntimeSettings, argv: Sequence[str] | None = None) -> bool:
    """Relaunch this command as a job of `runtime.world_size` processes; True when that job ran (and succeeded),
    False when this process should do the work itself. A failed rank ends the whole job: one line names it."""
    if runtime.world_size <= 1 or under_launcher():
        return False
    _check_gpus(runtime)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    # What torchrun would set (and warn about at length): one OpenMP thread per rank unless the user chose.
    os.environ.setdefault("OMP_NUM_THREADS", str(runtime.threads or 1))
    try:
        run(launcher_args(runtime, sys.argv[1:] if argv is None else argv))
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise DkdmError(job_failure(rank, runtime.world_size, failure.exitcode)) from None
    return True


def _check_gpus(runtime: RuntimeSettings) -> None:
    """One process per GPU: more processes than this node has GPUs is refused before anything starts."""
    import torch

    if runtime.device == "cpu" or runtime.device.startswith("mps") or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if runtime.nproc_per_node > gpus:
        raise DkdmError(f"runtime.nproc_per_node is {runtime.nproc_per_node} but this node has {gpus} GPU(s); "
                        f"set it to {gpus} or fewer (or runtime.device: cpu)")


def job_failure(rank: int, world_size: int, exitcode: int) -> str:
    """The one line for a job a rank ended: its own error (exit 2) was printed above; a crash or a kill was not."""
    if exitcode == EXIT_USAGE:
        return f"distributed job stopped: rank {rank} of {world_size} refused its input (its error is above)"
    how = f"exited with code {exitcode}"
    if exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    return (f"distributed job stopped: rank {rank} of {world_size} {how}; the other ranks were stopped, rerun the "
            "same command to resume from the last checkpoint")


@contextmanager
def distributed_job(ctx: Context) -> Iterator[DistContext]:
    """The process group of this job (gloo on CPU, NCCL on CUDA; one process: no group), torn down at the end."""
    from training.train.distributed import init_distributed, shutdown_distributed

    dist = init_distributed(ctx.device)
    try:
        yield dist
    finally:
        shutdown_distributed(dist)


def rank_context(ctx: Context, dist: DistContext) -> Context:
    """`ctx` for this rank: on CUDA each rank works on its own GPU (LOCAL_RANK), not on the profile's one."""
    if not dist.enabled or dist.device.type != "cuda":
        return ctx
    runtime = ctx.settings.runtime.model_copy(update={"device": str(dist.device)})
    return dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={"runtime": runtime}))


def run_job(ctx: Context, work: Callable[[Context, DistContext], None]) -> None:
    """What every heavy command does: relaunch as a job of `runtime.world_size` processes when the profile asks
    for one (and no launcher started us), else run `work(ctx, dist)` in this process's place of the job."""
    if launch_if_requested(ctx.settings.runtime):
        return
    with distributed_job(ctx) as dist:
        work(rank_context(ctx, dist), dist)
