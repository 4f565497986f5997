#!/usr/bin/env bash
# Create .venv (once) and install relay-trainer with what the main job and the tests need.
# torch is pinned and installed first: a looser range pulls gigabytes of CUDA packages. DeepSpeed is in
# too: the trainer tests run ZeRO-2/3 on the CPU (its ops are JIT-built on first use, none are needed here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${RELAY_VENV:-.venv}
stamp="$VENV/.relay-installed"
want="$(cat pyproject.toml tools/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[train,deepspeed,test]"
echo "$want" > "$stamp"
