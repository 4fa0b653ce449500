"""One job over many processes. A command that can run distributed asks `launch_if_requested` first: when the
profile wants `runtime.nproc_per_node` x `runtime.nnodes` > 1 processes and no launcher started this one, the
command relaunches itself through torch's elastic launcher (what `torchrun` runs) and waits; otherwise it does the
work here, inside `distributed_job`, which joins the process group torchrun prepared (or none, for one process).

Under a `torchrun` the user typed, torchrun's own options decide the world size and the settings' are ignored.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dkdm.errors import DkdmError

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


def launch_if_requested(runtime: RuntimeSettings, argv: Sequence[str] | None = None) -> bool:
    """Relaunch this command as a job of `runtime.world_size` processes; True when that job ran (and succeeded),
    False when this process should do the work itself. A failed rank ends the whole job: one line names it."""
    if runtime.world_size <= 1 or under_launcher():
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(torchrun_args(runtime, list(sys.argv[1:] if argv is None else argv)))
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise DkdmError(f"distributed job failed: rank {rank} of {runtime.world_size} exited with code "
                        f"{failure.exitcode} (the job was stopped; rerun the same command to resume)") from None
    return True


@contextmanager
def distributed_job(ctx: Context) -> Iterator[DistContext]:
    """The process group of this job (gloo on CPU, NCCL on CUDA; one process: no group), torn down at the end."""
    from training.train.distributed import init_distributed, shutdown_distributed

    dist = init_distributed(ctx.device)
    try:
        yield dist
    finally:
        shutdown_distributed(dist)
