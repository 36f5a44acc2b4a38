#!/usr/bin/env bash
# The accelerator checks, in steps, on a lent GPU machine that has JAX and no TensorFlow or Keras (docs/gpu.md
# says how to prepare the call here with benchmarks/gpu_prepare.sh and which steps to put in which call).
#
#   bash benchmarks/gpu_check.sh STEP [STEP ...]      results and logs go to $OUT (default: ./gpu-out)
#
#   setup     install the carried wheels (.whl/) into /tmp/site; print the device and the versions
#   stash     keep the carried parts of the data set (.gpu/cifar10.npz.part*) in /tmp/cifar-dash-data
#   data      join the kept parts into /tmp/cifar-dash-data/cifar10.npz and check its sha256
#   bench     benchmarks/bench_accelerator.py, every stage (or $GPU_CHECK_STAGES), $GPU_CHECK_PRECISION
#             (default mixed_bfloat16), written as $OUT/accelerator-<device>-jax.json
#   speedrun  the speedrun's recipe in full (10 epochs, all 50,000 images, flip+shift TTA), bfloat16
#   resnet    the resnet50v2 recipe for $GPU_CHECK_RESNET_EPOCHS epochs (default 1) on its 45,000 training
#             images, ResNet50 backbone from random weights (no ImageNet file travels), bfloat16
#   oom       a batch that cannot fit (resnet50v2 at $GPU_CHECK_OOM_BATCH, default 16384, on 3,000 more random images):
#             passes when train stops with exit 2 and its out-of-memory message (what ran out, what to change)
#
# For a dry run on a CPU: $GPU_CHECK_LIMIT (a number) shrinks the data of speedrun and resnet,
# $GPU_CHECK_SPEEDRUN_EPOCHS its epochs (default: the recipe's 10); $GPU_CHECK_DATA and $GPU_CHECK_RUNS move the
# folders kept in /tmp, $GPU_CHECK_CARRIED the carried parts' folder (.gpu); $PYTHON picks the interpreter (default python3).
# Every step runs even when an earlier one failed; the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
DATA=${GPU_CHECK_DATA:-/tmp/cifar-dash-data}  # outside the repo: kept between calls to a warm machine
RUNS=${GPU_CHECK_RUNS:-/tmp/cifar-dash-runs}
CARRIED=${GPU_CHECK_CARRIED:-.gpu}  # where the call's carried parts arrive
mkdir -p "$OUT" "$DATA" "$RUNS"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
LIMIT=()
[ -n "${GPU_CHECK_LIMIT:-}" ] && LIMIT=(--limit "$GPU_CHECK_LIMIT")
failed=0

say() { echo "== $(date -u +%H:%M:%S) $*"; }

# the run folder of a finished train command, packed without its models and backups (they are large and rebuilt
# from the log); one file per run, so that a call returns at most a handful of files
pack_run() {
  local stage_out=$1 name=$2 run
  run=$(ls -td "$stage_out"/runs/*/ 2>/dev/null | head -1)
  [ -n "$run" ] || { echo "no run folder under $stage_out"; return 1; }
  tar -C "$run" -czf "$OUT/$name.tar.gz" --exclude='*.keras' --exclude='backup*' --exclude='.work' .
  $PY - "$run" <<'PY'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
info = json.loads((run / "train_info.json").read_text())
keep = ("epochs", "n_train", "train_seconds", "train_images_per_second", "mixed_precision", "speed", "devices")
print({k: info.get(k) for k in keep})
if (run / "metrics.json").exists():
    m = json.loads((run / "metrics.json").read_text())
    print({k: m.get(k) for k in ("test_accuracy", "tta_accuracy", "n_test", "eval_seconds", "machine", "backend")})
PY
}

step_setup() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
      return 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, keras; print('jax', jax.__version__, jax.devices()); print('keras', keras.__version__, keras.backend.backend())"
}

step_stash() {
  compgen -G "$CARRIED/cifar10.npz.part*" >/dev/null || { echo "no $CARRIED/cifar10.npz.part* carried"; return 1; }
  cp "$CARRIED"/cifar10.npz.part* "$DATA"/ || return 1
  [ -f "$CARRIED/cifar10.npz.sha256" ] && cp "$CARRIED/cifar10.npz.sha256" "$DATA"/
  ls -l "$DATA"
}

step_data() {
  step_stash || true
  [ -f "$DATA/cifar10.npz.sha256" ] || { echo "no cifar10.npz.sha256 kept"; return 1; }
  cat "$DATA"/cifar10.npz.part* >"$DATA/cifar10.npz"
  (cd "$DATA" && sha256sum -c cifar10.npz.sha256) || { echo "the joined data set is incomplete or damaged"; return 1; }
}

step_bench() {
  # shellcheck disable=SC2086
  $PY benchmarks/bench_accelerator.py --precision "${GPU_CHECK_PRECISION:-mixed_bfloat16}" \
    ${GPU_CHECK_STAGES:+--stages $GPU_CHECK_STAGES} --json --out "$OUT"
}

data_file() {
  if [ -f "$DATA/cifar10.npz" ]; then echo "$DATA/cifar10.npz"; else echo "${CIFAR10_PATH:?no data set: run the data step or set CIFAR10_PATH}"; fi
}

step_speedrun() {
  local data
  data=$(data_file) || return 1
  rm -rf "$RUNS/speedrun"
  local epochs=()
  [ -n "${GPU_CHECK_SPEEDRUN_EPOCHS:-}" ] && epochs=(--epochs "$GPU_CHECK_SPEEDRUN_EPOCHS")
  $PY -m cifar_dash train speedrun --data "$data" --out "$RUNS/speedrun" --mixed-precision "${epochs[@]}" "${LIMIT[@]}" &&
    pack_run "$RUNS/speedrun" speedrun-run
}

step_resnet() {
  local data
  data=$(data_file) || return 1
  rm -rf "$RUNS/resnet50v2"
  $PY -m cifar_dash train resnet50v2 --data "$data" --out "$RUNS/resnet50v2" --epochs "${GPU_CHECK_RESNET_EPOCHS:-1}" \
    --backbone resnet50 --backbone-weights none --mixed-precision "${LIMIT[@]}" &&
    pack_run "$RUNS/resnet50v2" resnet50v2-run
}

step_oom() {
  local batch=${GPU_CHECK_OOM_BATCH:-16384} n=$((${GPU_CHECK_OOM_BATCH:-16384} + 3000)) log="$OUT/oom.log"
  $PY - "$DATA/random.npz" "$n" <<'PY' || return 1
import sys
import numpy as np

rng, n = np.random.default_rng(0), int(sys.argv[2])
np.savez(sys.argv[1], x_train=rng.integers(0, 256, (n, 32, 32, 3), np.uint8), y_train=rng.integers(0, 10, n, np.uint8),
         x_test=rng.integers(0, 256, (100, 32, 32, 3), np.uint8), y_test=rng.integers(0, 10, 100, np.uint8))
PY
  rm -rf "$RUNS/oom"
  $PY -m cifar_dash train resnet50v2 --data "$DATA/random.npz" --out "$RUNS/oom" --epochs 1 --backbone resnet50 \
    --backbone-weights none --mixed-precision --batch-size "$batch" --limit "$n" 2>"$log"
  local rc=$?
  tail -n 3 "$log"
  [ "$rc" -eq 2 ] && grep -q "ran out of .*memory.*--batch-size $((batch / 2))" "$log"
}

[ $# -gt 0 ] || { sed -n '2,22p' "$0"; exit 2; }
for step in "$@"; do
  case $step in
    setup | stash | data | bench | speedrun | resnet | oom) ;;
    *) echo "unknown step '$step' (setup, stash, data, bench, speedrun, resnet, oom)"; exit 2 ;;
  esac
done
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
for step in "$@"; do
  say "$step"
  start=$SECONDS
  if "step_$step"; then
    say "$step done in $((SECONDS - start)) s"
  else
    say "$step FAILED after $((SECONDS - start)) s"
    failed=1
  fi
done
exit "$failed"
