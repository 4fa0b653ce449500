#!/usr/bin/env bash
# One GPU check, one table: what the CPU tests cannot show. Fits 8 minutes on one H100/H200 (each part has its
# own time limit, so a slow part is reported as such and the rest still runs):
#   1. the CUDA-marked tests (pytest -m cuda)
#   2. benchmarks/bench_models.py: forward / training throughput of the paper presets (bf16)
#   3. benchmarks/bench_distill.py, cifar10-57M -> cifar10-14M at batch 128: DKDM step / (teacher forward + student
#      step), and seconds per 100 iterations against the paper's Table 9 (19.17 s on an A100; aim <= 5 s)
#   4. benchmarks/bench_latent_table9.py --scale paper: latent DKDM vs data-based, s / 100 iterations
#   5. a 1-GPU `torchrun ... -m dkdm distill dynamic` of the `ci` profile on CUDA, in a scratch copy of the repo
#
#   bash benchmarks/gpu_check.sh            # on the GPU host, from the repository root
#   bash benchmarks/gpu_check.sh --cpu      # the same parts at toy sizes on the CPU (checks the script itself)
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), GPU_CHECK_LOGS (default: a temp dir).
# Exit status: 0 when every part passed, 1 otherwise; the logs of each part stay in the log folder.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
MODE=cuda
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
if [[ -n "${PYTHON:-}" ]]; then :; elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
PYTHON=$(command -v "$PYTHON" || echo "$PYTHON")
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d -t dkdm-gpu-check.XXXXXX)}
mkdir -p "$LOGS"
export PYTHONPATH="$ROOT:$ROOT/platform${PYTHONPATH:+:$PYTHONPATH}"
ROWS="$LOGS/rows.tsv"
: > "$ROWS"
FAILED=0

row() {  # part, status, figures
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$ROWS"
  [[ "$2" == ok ]] || FAILED=1
}

run_part() {  # name, seconds, command...: runs it with a time limit, output to $LOGS/<name>.log; sets STATUS
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  ELAPSED=$((SECONDS - started))
  if [[ $rc -eq 0 ]]; then STATUS=ok; elif [[ $rc -eq 124 || $rc -eq 137 ]]; then STATUS="timeout ${limit}s"; else
    STATUS="FAIL rc=$rc"; fi
}

if [[ $MODE == cuda ]]; then
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PYTHON (use --cpu to check the script on the CPU)" >&2
    exit 2
  fi
  DEVICE=cuda
  MODELS_ARGS=(--device cuda --batch-size 128 --steps 10 --warmup 3)
  DISTILL_ARGS=(--device cuda --teacher cifar10-57M --student cifar10-14M --batch-size 128 --rounds 20 --warmup 5
                --prep-repeats 2)
  LATENT_ARGS=(--scale paper --device cuda --precision fp32 --iters 20 --warmup 3)
  DISTILL_LABEL="cifar10-57M -> cifar10-14M, b 128"
else
  DEVICE=cpu
  MODELS_ARGS=(--device cpu --presets "ci-teacher,ci-student" --batch-size 8 --steps 2 --warmup 1)
  DISTILL_ARGS=(--device cpu --teacher ci-teacher --student ci-student --batch-size 16 --steps 20 --rounds 3
                --warmup 1 --prep-repeats 1)
  LATENT_ARGS=(--scale cpu --device cpu --iters 2 --warmup 1)
  DISTILL_LABEL="ci-teacher -> ci-student, b 16"
fi
echo "gpu_check ($MODE): logs in $LOGS" >&2

# 1. CUDA-marked tests (on the CPU they are collected and skipped: the row says so).
run_part tests 120 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests
row "pytest -m cuda" "$STATUS" "$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$LOGS/tests.log" | tail -1)"

# 2. Model presets.
run_part models 90 "$PYTHON" benchmarks/bench_models.py "${MODELS_ARGS[@]}" --json "$LOGS/models.json"
if [[ $STATUS == ok ]]; then
  while IFS=$'\t' read -r preset figures; do
    row "bench_models $preset" ok "$figures"
  done < <("$PYTHON" - "$LOGS/models.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    mem = f", peak {r['peak_mem_mb']:,.0f} MiB" if "peak_mem_mb" in r else ""
    print(f"{r['preset']}\tforward {r['forward_img_s']:,.0f} img/s, train {r['train_img_s']:,.0f} img/s "
          f"(batch {r['batch']}{mem})")
EOF
)
else
  row "bench_models" "$STATUS" "see $LOGS/models.log"
fi

# 3. DKDM step cost, cifar10-57M -> cifar10-14M at batch 128 (Table 9: 19.17 s / 100 it on an A100).
run_part distill 90 "$PYTHON" benchmarks/bench_distill.py "${DISTILL_ARGS[@]}"
c_ms=$(awk '/c_dkdm_step/ {print $2}' "$LOGS/distill.log")
ratio=$(awk '/ratio c\/\(a\+b\)/ {print $3}' "$LOGS/distill.log")
prep=$(awk '/ratio prep\/bare/ {print $3}' "$LOGS/distill.log")
if [[ $STATUS == ok && -n "$c_ms" ]]; then
  per100=$(awk -v ms="$c_ms" 'BEGIN {printf "%.2f", ms / 10}')
  row "bench_distill $DISTILL_LABEL" ok \
    "${per100} s/100 it (paper A100 19.17, aim <= 5); c/(a+b) ${ratio} (<= 1.05); prep/bare ${prep} (>= 0.9)"
else
  row "bench_distill" "$STATUS" "see $LOGS/distill.log"
fi

# 4. Latent Table 9 at paper scale.
run_part latent 150 "$PYTHON" benchmarks/bench_latent_table9.py "${LATENT_ARGS[@]}"
dkdm_s=$(awk '/latent DKDM/ {print $3}' "$LOGS/latent.log")
based_s=$(awk '/latent data-based/ {print $3}' "$LOGS/latent.log")
lratio=$(awk -F'= ' '/ratio DKDM/ {split($2, a, " "); print a[1]}' "$LOGS/latent.log")
if [[ $STATUS == ok && -n "$dkdm_s" ]]; then
  row "bench_latent_table9 ${LATENT_ARGS[*]:0:2}" ok \
    "DKDM ${dkdm_s} s/100 it, data-based ${based_s} (paper A100 55.52 / 68.77); ratio ${lratio} (paper 0.807)"
else
  row "bench_latent_table9" "$STATUS" "see $LOGS/latent.log"
fi

# 5. The user's torchrun on one GPU, `ci` profile, in a scratch copy (its own outputs, MLflow store, .dkdm).
SCRATCH="$LOGS/repo"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./outputs --exclude=./.dkdm --exclude=./mlflow.db \
  --exclude=./mlruns --exclude=./mlartifacts --exclude=./optuna.journal --exclude='*/__pycache__' -cf - . \
  | tar -C "$SCRATCH" -xf -
# Run through `bash -c ci_job` below: timeout cannot call a shell function.
# shellcheck disable=SC2329
ci_job() {
  cd "$SCRATCH" || return 1
  export PYTHONPATH="$SCRATCH:$SCRATCH/platform" DKDM_RUNTIME__DEVICE=$DEVICE DKDM_RUNTIME__PROGRESS=false
  "$PYTHON" -m dkdm profile use ci && "$PYTHON" -m dkdm data && "$PYTHON" -m dkdm teacher \
    && "$PYTHON" -m dkdm prepare-pool \
    && "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 -m dkdm distill dynamic
}
export SCRATCH PYTHON DEVICE
export -f ci_job
run_part torchrun 150 bash -c ci_job
summary=$(grep -E '^distill dynamic:' "$LOGS/torchrun.log" | tail -1)
digest=$(grep -oE 'rank 0 of 1 weights sha256 [0-9a-f]{12}' "$LOGS/torchrun.log" | tail -1)
if [[ $STATUS == ok && -n "$summary" && -n "$digest" ]]; then
  row "torchrun -m dkdm distill (ci, $DEVICE)" ok "${ELAPSED}s for data+teacher+pool+distill; ${summary%% ->*}; $digest"
else
  row "torchrun -m dkdm distill (ci)" "${STATUS/ok/FAIL no summary}" "see $LOGS/torchrun.log"
fi

# The table.
device_name=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
echo
echo "dkdm gpu_check on $device_name ($MODE), torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
printf '%-44s %-14s %s\n' "part" "status" "figures"
printf '%-44s %-14s %s\n' "----" "------" "-------"
while IFS=$'\t' read -r part status figures; do
  printf '%-44s %-14s %s\n' "$part" "$status" "$figures"
done < "$ROWS"
exit "$FAILED"
