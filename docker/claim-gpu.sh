#!/bin/sh
# Run a command on one GPU of this host that no other worker on the host holds.
#
# `docker compose up --scale optuna-worker=N` hands every replica the same device list (Compose
# has no per-replica GPU assignment), so without this every worker would train on GPU 0. Each
# replica instead takes an exclusive lock on gpu<i>.lock in a directory on a volume the replicas
# share, and keeps the lock's file descriptor open across `exec`: the lock lives exactly as long
# as the worker process, and a crashed or removed worker frees its GPU.
#
# Usage: dkdm-claim-gpu COMMAND [ARGS...]
# Env:   DKDM_GPU_LOCK_DIR (default /var/lock/dkdm-gpus), DKDM_GPU_COUNT (default: nvidia-smi),
#        DKDM_TUNE_WORKER_BASE (default 0).
# Sets:  CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER, DKDM_TUNE_WORKER (base + GPU index).
set -eu

lock_dir="${DKDM_GPU_LOCK_DIR:-/var/lock/dkdm-gpus}"
if [ -n "${DKDM_GPU_COUNT:-}" ]; then
    count="$DKDM_GPU_COUNT"
else
    count=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
fi
case "$count" in
    '' | *[!0-9]*) echo "dkdm-claim-gpu: DKDM_GPU_COUNT=$count is not a number" >&2; exit 2 ;;
esac
[ "$count" -gt 0 ] || { echo "dkdm-claim-gpu: no GPU visible in this container (is the GPU reservation in place?)" >&2; exit 2; }
[ "$#" -gt 0 ] || { echo "dkdm-claim-gpu: no command given" >&2; exit 2; }
mkdir -p "$lock_dir"

i=0
while [ "$i" -lt "$count" ]; do
    exec 9>>"$lock_dir/gpu$i.lock"
    if flock --nonblock 9; then
        # nvidia-smi numbers GPUs in PCI bus order; make CUDA number them the same way.
        export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="$i"
        # The slot doubles as `dkdm tune`'s worker index (its TPE seed offset), so workers on
        # one host never sample the same points; DKDM_TUNE_WORKER_BASE separates hosts.
        export DKDM_TUNE_WORKER="$(( ${DKDM_TUNE_WORKER_BASE:-0} + i ))"
        echo "dkdm-claim-gpu: GPU $i of $count" >&2
        exec "$@"
    fi
    exec 9>&-
    i=$((i + 1))
done
echo "dkdm-claim-gpu: all $count GPUs of this host are held by other workers; scale to at most $count per host" >&2
exit 3
