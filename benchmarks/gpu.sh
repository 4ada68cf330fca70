#!/usr/bin/env bash
# GPU benchmark at the paper's shape (BART-large, random weights, bf16 autocast), about 5 minutes at most.
#
#   OUT=/some/folder bash benchmarks/gpu.sh            # writes $OUT/gpu-bart-large.json and $OUT/gpu-bench.log
#   PYTHON=/path/to/python bash benchmarks/gpu.sh      # a python with torch (CUDA), transformers and peft
#
# Needs no internet and no installed petl (the repository root goes on PYTHONPATH). The python run has its
# own budget (--budget-s) and per-method timeouts, and `timeout` kills it in any case after 330 s; the JSON is
# rewritten after every phase, so a run cut short still leaves what it measured. Extra arguments go to
# python -m benchmarks.gpu (for example --batches 16 or --rounds 5).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/petl-gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
{
  date -u +"start %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('transformers', transformers.__version__)
try:
    import peft; print('peft', peft.__version__)
except ImportError:
    print('peft missing: PEFT LoRA is skipped')" 2>&1
} | tee "$OUT/gpu-bench.log"
EXTRA=()
"$PY" -c "import peft" 2>/dev/null || EXTRA+=(--no-peft)
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout -k 15 330 "$PY" -u -m benchmarks.gpu \
  --out "$OUT/gpu-bart-large.json" --budget-s 270 "${EXTRA[@]}" "$@" 2>&1 | tee -a "$OUT/gpu-bench.log"
status=${PIPESTATUS[0]}
date -u +"end %Y-%m-%dT%H:%M:%SZ (exit $status)" | tee -a "$OUT/gpu-bench.log"
exit "$status"
