#!/usr/bin/env bash
# GPU benchmark, record version 2 (benchmarks/gpu.py): BART-large at batch 64 and 16, RoBERTa-base, SmolLM2-135M,
# every method against the floor, full fine-tuning and PEFT, until every ratio is known to ±5%. About 8 minutes.
#
#   PETL_GIT_COMMIT=<commit> OUT=/some/folder bash benchmarks/gpu.sh
#       writes $OUT/gpu-v2-<device>-<UTC time>.json (the record) and $OUT/gpu-v2-<UTC time>.log
#       (OUT defaults to runs/benchmarks; PETL_GIT_COMMIT to `git rev-parse HEAD` where this copy has .git)
#   PYTHON=/path/to/python BUDGET_S=450 LIMIT_S=510 bash benchmarks/gpu.sh --shapes bart-large-b64
#
# Needs no internet and no installed petl (the repository root goes on PYTHONPATH). The GPU machine's own peft
# (0.21.0 there in 2026-11) fails to wrap BART under transformers 5; the pinned one (constraints.txt) is carried
# as a wheel: `bash scripts/gpu_wheels.sh --bench` puts it in .whl/ here, carry .whl, and this script installs
# a carried peft or transformers wheel into /tmp/site where its version differs from the python's own.
# The python run has its own budget (BUDGET_S, 450 s) and per-phase timeouts, and `timeout` stops it in any case
# after LIMIT_S (510 s); the JSON is rewritten after every phase, so a run cut short keeps what it measured.
# Extra arguments go to python -m benchmarks.gpu.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/benchmarks}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-450}"
LIMIT_S="${LIMIT_S:-510}"
STAMP=$(date -u +%Y%m%d-%H%M%S)
LOG="$OUT/gpu-v2-$STAMP.log"
mkdir -p "$OUT"
# Fewer, larger blocks: the interleaved methods' different activation shapes do not fragment the cache.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
{
  date -u +"start %Y-%m-%dT%H:%M:%SZ"
  [ -n "${PETL_GIT_COMMIT:-}" ] || git rev-parse HEAD >/dev/null 2>&1 \
    || echo "warning: PETL_GIT_COMMIT is not set and this copy has no .git: the record will name no commit"
  echo "commit: ${PETL_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  for wheel in .whl/peft-*.whl .whl/transformers-*.whl; do
    [ -e "$wheel" ] || continue
    base=$(basename "$wheel"); name=${base%%-*}; version=$(echo "$base" | cut -d- -f2)
    have=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || echo none)
    if [ "$have" != "$version" ]; then
      echo "installing the carried $name $version into /tmp/site (this python has $have)"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel" \
        || echo "warning: installing $wheel failed"
    fi
  done
} 2>&1 | tee "$LOG"
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | head -4
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('transformers', transformers.__version__, transformers.__file__)
try:
    import peft; print('peft', peft.__version__, peft.__file__)
except ImportError:
    print('peft missing: the PEFT peers are not measured')" 2>&1
} | tee -a "$LOG"
EXTRA=()
"$PY" -c "import peft" 2>/dev/null || EXTRA+=(--no-peft)
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout -k 15 "$LIMIT_S" "$PY" -u -m benchmarks.gpu \
  --out-dir "$OUT" --budget-s "$BUDGET_S" "${EXTRA[@]}" "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
date -u +"end %Y-%m-%dT%H:%M:%SZ (exit $status; 124: stopped at LIMIT_S=$LIMIT_S)" | tee -a "$LOG"
exit "$status"
