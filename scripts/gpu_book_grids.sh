#!/usr/bin/env bash
# Run grid points of the book on a CUDA machine that has no internet: `python -m petl sweep` (papermill executes
# notebooks/train.ipynb for each point, several at once on one GPU), exactly as on any other machine.
#
#   PETL_GIT_COMMIT=<commit> OUT=/some/folder WORKERS=6 LIMIT_S=420 bash scripts/gpu_book_grids.sh book/grids-gpu/gen_xsum.yaml ...
#
# The machine's copy has no .git: PETL_GIT_COMMIT (the commit the copy was made from) goes into every record.
# Its Python lacks papermill, the Jupyter kernel and datasets: `bash scripts/gpu_wheels.sh` downloads them here
# into .whl/; carry .whl and this script installs them into /tmp/site and puts that on PYTHONPATH.
#
# Assets come from $PETL_ASSETS (complete asset folders carried from a machine that fetched them) or are
# installed from distribution files in $PETL_ASSET_FILES (sha256-checked, as `petl.assets` does everywhere).
# The sweep starts from a copy of runs/, so complete points are skipped; with FRESH_RUNS=1 it starts from runs/baselines
# alone, so every point runs again: the protocol's cross-machine sample, whose records go to runs/cross-machine/
# (book/protocol/README.md). After LIMIT_S seconds the sweep and its
# notebook kernels are stopped (timeout signals the whole process group): a run cut short leaves no record.
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
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the carried wheels (.whl/) failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import papermill, ipykernel, datasets" 2>/dev/null \
  || { echo "error: $PY cannot import papermill, ipykernel and datasets: run 'bash scripts/gpu_wheels.sh' on a machine with the registry and carry .whl/" >&2; exit 1; }
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

if [ "${FRESH_RUNS:-0}" = 1 ]; then
  mkdir "$work/runs" && cp -r runs/baselines "$work/runs/"
else
  cp -r runs "$work/runs"
fi
before=$(ls "$work/runs")
PYTHONUNBUFFERED=1 timeout -k 10 "$LIMIT_S" "$PY" -m petl sweep "$@" --runs-dir "$work/runs" --jobs "$WORKERS" \
  > "$work/sweep.log" 2>&1
echo "sweep exit status $? (124: stopped at LIMIT_S=$LIMIT_S)" >> "$LOG"
grep -E '^\[|^sweep done|FAILED|^planned again|^waiting for their lr|^  ' "$work/sweep.log" | tail -120 >> "$LOG"
new=$(comm -13 <(echo "$before") <(ls "$work/runs"))
echo "new records: $(echo $new | wc -w)" | tee -a "$LOG"
[ -n "$new" ] && tar -C "$work/runs" --exclude="*/weights" -czf "$OUT/new-runs.tgz" $new   # weights stay there
date -u +"end %Y-%m-%dT%H:%M:%SZ" >> "$LOG"
cp "$LOG" "$OUT/"
