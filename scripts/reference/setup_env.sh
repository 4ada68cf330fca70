#!/usr/bin/env bash
# Build a separate Python environment that runs the paper's reference implementation (a 2021 fork of
# transformers 4.9, github.com/jxhe/unify-parameter-efficient-tuning at commit 3222ce2) beside torch 2.13.
#
#   scripts/reference/setup_env.sh /path/to/unify-parameter-efficient-tuning [ENV_DIR]
#
# The fork is installed --no-deps (its 2021 pins cannot resolve against torch 2.13) with only what its modeling
# code imports; tokenizers is not needed for models built from a config. ENV_DIR defaults to .venv-ref/ (git-ignored).
# The environment is used by scripts/reference/golden.py to refresh tests/fixtures/reference/.
set -euo pipefail
checkout=${1:?usage: setup_env.sh /path/to/reference-checkout [ENV_DIR]}
env_dir=${2:-.venv-ref}
python=${PYTHON:-python3.11}
expected=3222ce2c0079566a28043e22380eb4ab6ad14389
[ -f "$checkout/petl/petl_factory.py" ] && [ -f "$checkout/src/transformers/models/bart/modeling_bart.py" ] || {
  echo "error: $checkout is not a checkout of jxhe/unify-parameter-efficient-tuning (no petl/petl_factory.py)" >&2; exit 2; }
if git -C "$checkout" rev-parse HEAD >/dev/null 2>&1; then
  commit=$(git -C "$checkout" rev-parse HEAD)
  [ "$commit" = "$expected" ] || echo "warning: $checkout is at $commit, the fixtures were made at $expected" >&2
fi
torch_pin=$(sed -n 's/.*"torch==\([^"]*\)".*/\1/p' pyproject.toml | head -1)
"$python" -m venv "$env_dir"
"$env_dir/bin/python" -m pip install --quiet "torch==${torch_pin}" "numpy<2.5" "safetensors" filelock regex packaging pyyaml \
  requests sacremoses tqdm "huggingface_hub==0.0.12"
"$env_dir/bin/python" -m pip install --quiet --no-deps "$checkout"
echo "reference environment ready: $env_dir (fork from $checkout)"
