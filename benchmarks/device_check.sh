#!/usr/bin/env bash
# One-shot accelerator check, under 8 minutes on one H100/H200: the kernels benchmark, a Table-2
# sweep of every model in bf16 and fp32, and 300 ListOps steps per model, all JSON into one folder.
#
#   bash benchmarks/device_check.sh [OUT]      # OUT defaults to $OUT, else ./device-check-<date>
#
# Each phase has a cap in seconds and never runs past what is left of BUDGET_S (default 470): a
# phase cut short keeps what it finished (the sweep saves after each point; a run stopped by
# SIGTERM saves a checkpoint and its summary), and the next phase still runs. Knobs (env vars):
# SWEEP_LENGTHS (default 1024,4096,16384: three points spanning 1K-16K; each point is a fresh
# process, so all five lengths at both dtypes do not fit the budget), KERNEL_LENGTHS (default:
# 1K-16K on a GPU), MODELS (default all), STEPS (ListOps steps, 300), SWEEP_BATCH (32, LRA's),
# LRA (the CLI, default: .venv/bin/lra or lra on PATH), PYTHON (likewise).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-device-check-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
LRA=${LRA:-$( [ -x .venv/bin/lra ] && echo .venv/bin/lra || echo lra)}
MODELS=${MODELS:-transformer,fastformer,linear,sikf,nystromformer,fourier,topk}
SWEEP_LENGTHS=${SWEEP_LENGTHS:-1024,4096,16384}
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
smi = shutil.which("nvidia-smi") and subprocess.run(
    ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
    capture_output=True, text=True).stdout.strip()
print(json.dumps({"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
                  "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                  "nvidia_smi": smi or None,
                  "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()},
                 indent=1))
PYEOF

# 1. every mixer alone, fwd+bwd, float32 then bfloat16 (the bf16 run shows the fused cuDNN path)
kl=${KERNEL_LENGTHS:+--lengths ${KERNEL_LENGTHS//,/ }}
phase kernels-float32 90 env PYTHONPATH=. "$PY" benchmarks/kernels.py $kl --repeats 5 \
  --out "$OUT/kernels-float32.json"
phase kernels-bfloat16 60 env PYTHONPATH=. "$PY" benchmarks/kernels.py $kl --repeats 5 \
  --dtype bfloat16 --out "$OUT/kernels-bfloat16.json"

# 2. LRA Table 2: steps/s and peak memory per model and length, bf16 then fp32 -> $OUT/sweeps/
for dtype in bfloat16 float32; do
  phase "sweep-$dtype" 100 "$LRA" sweep --task text --models "$MODELS" \
    --lengths "$SWEEP_LENGTHS" --batch-size "${SWEEP_BATCH:-32}" --steps 5 --warmup 1 \
    --timeout 60 --set "model.dtype=\"$dtype\"" --results-dir "$OUT"
done

# 3. 300 ListOps steps per model on the smoke data (generated, no download) -> $OUT/runs/
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
phase listops-data 30 "$LRA" data prepare listops --preset smoke --data-dir "$DATA"
for m in ${MODELS//,/ }; do
  phase "listops-$m" 40 "$LRA" run --model "$m" --task listops --preset smoke \
    --steps "${STEPS:-300}" --data-dir "$DATA" --results-dir "$OUT"
done
echo "done in $(( $(date +%s) - START )) s; JSON in $OUT" | tee -a "$OUT/phases.log"
