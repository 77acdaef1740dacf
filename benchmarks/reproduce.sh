#!/usr/bin/env bash
# The ListOps reproduction runs on one GPU (issue 27), within about 9 minutes on one H100: every
# model under `--preset nystrom` (the Nystromformer protocol, 5,000 steps) and the Transformer
# under `--preset lra` (LRA Table 1's setup), side by side on the one GPU, then their evidence
# (summary, config, metrics, curves, commands, commit, date, machine, wall and CPU time) packed
# into one archive, with no checkpoints.
#
#   bash benchmarks/reproduce.sh [OUT] [reproduce.py options]   # OUT: $OUT, else ./reproduce-<date>
#
# Runs from an install (.venv/bin/python) or straight from the source tree (PYTHONPATH=.), for a
# machine where nothing can be installed. The ListOps data are generated first (about 2-3 minutes
# of one CPU core: 100,000 expressions). At DEADLINE_S seconds of training (default 330) every run
# still going checkpoints and stops; `python benchmarks/reproduce.py run --target gpu` on the same
# folders continues them. Unpack the archive at the repository root and commit
# results/published-runs/<machine>/ (see docs/reproduce.md).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-reproduce-$(date -u +%Y%m%dT%H%M%SZ)}
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then OUT=$1; shift; fi  # the rest go to reproduce.py
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || echo python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=${WORK:-${TMPDIR:-/tmp}/lra-reproduce}
mkdir -p "$WORK"
"$PY" benchmarks/reproduce.py run --target gpu --deadline "${DEADLINE_S:-330}" --nice 0 \
  --data-dir "$WORK/data" --results-dir "$WORK/results" --out "$WORK/published-runs" \
  "$@" 2>&1 | tee "$OUT/reproduce.log"
status=${PIPESTATUS[0]}
# One archive (a device machine returns few files): the evidence, and every run's summary,
# metrics and stretch log, finished or not, so an unfinished run says where it stands.
tar -czf "$OUT/reproduce-evidence.tgz" -C "$WORK" --exclude=checkpoints \
  published-runs results/runs results/reproduce 2>/dev/null
ls -l "$OUT"
exit "$status"
