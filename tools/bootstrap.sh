#!/usr/bin/env bash
# Create .venv (once) and install relay-trainer with what the main job and the tests need.
# torch is pinned and installed first: a looser range pulls gigabytes of CUDA packages. DeepSpeed is in
# too: the trainer tests run ZeRO-2/3 on the CPU (its ops are JIT-built on first use, none are needed here).
# Says what it does on stderr, with pip's own progress; silent when .venv is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${RELAY_VENV:-.venv}
stamp="$VENV/.relay-installed"
want="$(cat pyproject.toml tools/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
say() { echo "bootstrap: $*" >&2; }
started=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --progress-bar on --disable-pip-version-check)
say "upgrading pip in $VENV"
"${pip[@]}" --upgrade pip >&2 || say "could not upgrade pip; going on with $("$VENV/bin/python" -m pip --version)"
say "installing torch==2.13.0 first (pinned, so nothing pulls a CUDA build; the first time downloads ~200 MB)"
"${pip[@]}" "torch==2.13.0" >&2
say "installing relay-trainer with its train, deepspeed and test extras (transformers, trl, deepspeed, pytest...)"
"${pip[@]}" -e ".[train,deepspeed,test]" >&2
echo "$want" > "$stamp"
say "$VENV is ready ($((SECONDS - started))s)"
