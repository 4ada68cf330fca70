#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's Python (3.12, with torch and transformers but no registry access)
# lacks for `python -m petl sweep`: papermill and the Jupyter kernel it runs the notebook in, datasets, and the
# metrics' packages, at the versions constraints.txt pins. They go to .whl/ (git-ignored), 17 MB; carry .whl
# with the working tree and scripts/gpu_book_grids.sh installs them into /tmp/site there.
#
#   bash scripts/gpu_wheels.sh            # then: carry .whl; bash scripts/gpu_book_grids.sh GRID...
#   bash scripts/gpu_wheels.sh --bench    # only peft (pure Python, 0.8 MB) for benchmarks/gpu.sh, kept beside the rest
#
# peft is among the wheels because the GPU image's own (0.21.0 in 2026-11) cannot wrap BART under transformers 5;
# it is downloaded without its dependencies (torch among them), which the image has.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DEST=.whl
peft_wheel() {
  mkdir -p "$DEST"
  rm -f "$DEST"/peft-*.whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: -c constraints.txt -d "$DEST" peft
}
if [ "${1:-}" = "--bench" ]; then
  peft_wheel
  echo "$(ls "$DEST"/peft-*.whl) in $DEST/"
  exit 0
fi
# What the GPU image already holds (torch, transformers, accelerate, numpy, pandas, pyarrow, pyyaml, tqdm, ...)
# is left out: these are the distributions of the closure below that it lacks (device tool's package list, 2026-11).
NEEDED="asttokens comm datasets debugpy defusedxml dill entrypoints executing fastjsonschema httpcore2 httpx2
ipykernel ipython ipython_pygments_lexers jedi jsonschema jsonschema_specifications jupyter_client jupyter_core
matplotlib_inline multiprocess nbclient nbformat nest_asyncio2 nltk papermill parso pexpect platformdirs
prompt_toolkit ptyprocess pure_eval pyzmq referencing rouge_score rpds_py sacremoses stack_data tenacity tornado
traitlets truststore tzdata wcwidth"
platforms=""
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux2010 manylinux1; do platforms="$platforms --platform ${p}_x86_64"; done
all=$(mktemp -d)
trap 'rm -rf "$all"' EXIT
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp $platforms -c constraints.txt \
  -d "$all" papermill ipykernel datasets sacremoses nltk absl-py
"$PY" -m pip wheel -q --no-deps -c constraints.txt -w "$all" rouge-score     # pure Python, published as an sdist only
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for name in $NEEDED; do
  found=$(ls "$all" | grep -i "^${name}-[0-9]" || true)
  [ -n "$found" ] || { echo "error: no wheel of $name in the download (did a pin change?)" >&2; exit 1; }
  cp "$all/$found" "$DEST/"
done
peft_wheel
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST/"
