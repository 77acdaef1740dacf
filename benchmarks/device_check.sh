#!/usr/bin/env bash
# One-shot accelerator check, under 8 minutes on one H100/H200: the kernels benchmark, a Table-2
# sweep of every model in bf16 and fp32, and 300 steps of the ListOps quick preset per model, all
# JSON into one folder.
#
#   bash benchmarks/device_check.sh [OUT]      # OUT defaults to $OUT, else ./device-check-<date>
#
# Runs from an install (.venv/bin/lra, or lra on PATH) or straight from the source tree (python
# -m lra_bench with PYTHONPATH=.), for machines where nothing can be installed.
#
# Each phase has a cap in seconds and never runs past what is left of BUDGET_S (default 470): a
# phase cut short keeps what it finished (the sweep saves after each point; a run stopped by
# SIGTERM saves a checkpoint and its summary), and the next phase still runs. Each sweep point is
# a fresh process (its peak memory is its own), about 5-10 s of start-up and compilation, so the
# budget holds the bf16 sweep at three lengths and the fp32 sweep at the two longest. The ListOps
# runs go to the device together, as accuracy checks: their step times are not comparable (the
# sweep's are). Knobs (env vars): SWEEP_LENGTHS (bf16, default 1024,4096,16384),
# SWEEP_LENGTHS_FP32 (default 4096,16384), KERNEL_LENGTHS (float32 kernels, default 1K-16K on a
# GPU), KERNEL_LENGTHS_BF16 (default 4096,16384), MODELS (default all), STEPS (ListOps steps, 300),
# SWEEP_BATCH (32, LRA's), LRA (the CLI), PYTHON.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-device-check-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || echo python)}
if [ -z "${LRA:-}" ]; then
  if [ -x .venv/bin/lra ]; then LRA=.venv/bin/lra
  elif command -v lra >/dev/null; then LRA=lra
  else  # from the source tree: a wrapper, so `timeout` can run it like any command
    LRA=$(mktemp -d)/lra
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" -m lra_bench "$@"\n' \
      "$PWD" "$(command -v "$PY")" > "$LRA"
    chmod +x "$LRA"
  fi
fi
MODELS=${MODELS:-transformer,fastformer,linear,sikf,nystromformer,fourier,topk}
SWEEP_LENGTHS=${SWEEP_LENGTHS:-1024,4096,16384}
SWEEP_LENGTHS_FP32=${SWEEP_LENGTHS_FP32:-4096,16384}
KERNEL_LENGTHS_BF16=${KERNEL_LENGTHS_BF16:-4096,16384}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
phase() {  # phase NAME CAP CMD...: at most CAP seconds (and what is left), log to $OUT/NAME.log
  local name=$1 cap=$2; shift 2
  local t=$(left)
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -le 10 ]; then echo "skip $name: budget spent" | tee -a "$OUT/phases.log"; return; fi
  echo "== $name ($t s left)" | tee -a "$OUT/phases.log"
  timeout --signal=TERM --kill-after=15 "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "   $name exit $?" | tee -a "$OUT/phases.log"
}

"$PY" - > "$OUT/environment.json" <<'PYEOF'
import json, shutil, subprocess, jax, jaxlib, flax
from lra_bench import measure  # run from the repository root
smi = shutil.which("nvidia-smi") and subprocess.run(
    ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
    capture_output=True, text=True).stdout.strip()
print(json.dumps({"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
                  "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                  "nvidia_smi": smi or None,
                  "commit": measure.git_commit()},
                 indent=1))
PYEOF

# 0. the fused (cuDNN) attention against the explicit form, forward and gradients
# (tests/conftest.py picks CPU unless JAX_PLATFORMS is set: empty means the default backend)
phase fused-attention 60 env JAX_PLATFORMS="${JAX_PLATFORMS:-}" "$PY" -m pytest -q -rs \
  -p no:cacheprovider tests/test_attention_fused.py

# 1. every mixer alone, fwd+bwd, float32 then bfloat16 (the bf16 run shows the fused cuDNN path)
kl=${KERNEL_LENGTHS:+--lengths ${KERNEL_LENGTHS//,/ }}
phase kernels-float32 75 env PYTHONPATH=. "$PY" benchmarks/kernels.py $kl --repeats 10 \
  --out "$OUT/kernels-float32.json"
phase kernels-bfloat16 45 env PYTHONPATH=. "$PY" benchmarks/kernels.py \
  --lengths ${KERNEL_LENGTHS_BF16//,/ } --repeats 10 --dtype bfloat16 \
  --out "$OUT/kernels-bfloat16.json"

# 2. LRA Table 2: steps/s and peak memory per model and length, bf16 then fp32 -> $OUT/sweeps/
# Attention dropout off for every model, so that each runs its fastest kernel (the baseline's
# fused cuDNN attention has no dropout); with the protocols' 0.1 the baseline writes N x N weights.
sweep() {  # sweep DTYPE LENGTHS CAP
  phase "sweep-$1" "$3" "$LRA" sweep --task text --models "$MODELS" --lengths "$2" \
    --batch-size "${SWEEP_BATCH:-32}" --steps 5 --warmup 1 --timeout 60 \
    --set "model.dtype=\"$1\"" --set model.attention_dropout=0 --results-dir "$OUT"
}
sweep bfloat16 "$SWEEP_LENGTHS" 150
sweep float32 "$SWEEP_LENGTHS_FP32" 110

# 3. 300 steps of the ListOps quick preset per model, all at once on the device (generated data,
# no download) -> $OUT/runs/
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
phase listops-data 20 "$LRA" data prepare listops --preset quick --data-dir "$DATA"
listops() {  # every model at once; each run's log beside the others
  for m in ${MODELS//,/ }; do
    "$LRA" run --model "$m" --task listops --preset quick --steps "${STEPS:-300}" \
      --data-dir "$DATA" --results-dir "$OUT" > "$OUT/listops-$m.log" 2>&1 &
  done
  trap 'kill -TERM $(jobs -p) 2>/dev/null; wait' TERM
  wait
}
export -f listops
export LRA DATA OUT MODELS STEPS
phase listops 80 bash -c listops
echo "done in $(( $(date +%s) - START )) s; JSON in $OUT" | tee -a "$OUT/phases.log"
