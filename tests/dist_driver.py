"""Runs one sharded stage inside a job of processes, as a `dkdm` command does through dkdm.launch: the profile's
context, `distributed_job`, then the stage with `dist=`. For the tests, in a project folder:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_driver.py STAGE [ARGS]
    python tests/dist_driver.py STAGE [ARGS]          (one process: the reference result)

STAGE: reference | evaluate-teacher | pool [OUT] | sample CHECKPOINT NUM OUT
"""
from __future__ import annotations

import sys
from pathlib import Path

from dkdm.command import context
from dkdm.launch import distributed_job


def main(argv: list[str]) -> None:
    from dkdm.stages import evaluate, pool, reference, sample

    stage, *args = argv
    ctx = context(None)
    with distributed_job(ctx) as dist:
        if stage == "reference":
            reference.run(ctx, dist=dist)
        elif stage == "evaluate-teacher":
            evaluate.run(ctx, teacher=True, dist=dist)
        elif stage == "pool":
            pool.run(ctx, out=Path(args[0]) if args else None, dist=dist)
        elif stage == "sample":
            sample.run(ctx, checkpoint=Path(args[0]), num=int(args[1]), steps="5", ddim=False, eta=0.0, batch_size=3,
                       seed=4, ema=True, out=Path(args[2]), grid=None, dist=dist)
        else:
            raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
