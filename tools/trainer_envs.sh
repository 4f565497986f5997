#!/usr/bin/env bash
# Build the third-party trainer environments the tests run under the relay, each as a user would have it:
# its own venv with its own versions of transformers/trl/peft, next to the worker's .venv.
#
#   bash tools/trainer_envs.sh [NAME...]     # default: every tools/trainer_envs/<NAME>.txt
#
# Each environment lands in $RELAY_TRAINER_ENVS (default .cache/envs)/<NAME> and is rebuilt only when
# its requirement list, the shared constraints or this script change (a stamp holds their hash, like
# tools/bootstrap.sh's .venv stamp). torch==2.13.0 (the CPU wheel) goes in first. PyPI's torchvision and
# torchaudio are CUDA builds that break on a CPU torch: torchvision is removed (transformers then does
# without it); torchaudio, which LLaMA-Factory imports at start-up (it reads audio data with it), keeps its
# Python package but loses its native libraries, so it imports without its extension (the case torchaudio
# documents for pex deployments). On a GPU image none of this applies: install as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ROOT=${RELAY_TRAINER_ENVS:-.cache/envs}
specs=tools/trainer_envs
if [ $# -eq 0 ]; then
  for req in "$specs"/*.txt; do
    name="$(basename "$req" .txt)"
    [ "$name" = constraints ] || set -- "$@" "$name"
  done
fi
mkdir -p "$ROOT"
# The same wheel unpacks the same bytes: torch alone is 750 MB in each environment and in .venv. util-linux's
# hardlink makes the identical files one after each build (2 GB less on disk for the two environments, and
# the peak is one environment's worth; pip replaces files, never writes into them, so a later install in one
# environment leaves the others as they were).
share_identical_files() {
  command -v hardlink >/dev/null || return 0
  local site=() dir
  for dir in .venv "$ROOT"/*; do
    if [ -d "$dir/lib" ]; then site+=("$dir"/lib/python3*/site-packages); fi
  done
  hardlink --quiet --ignore-time --minimum-size 4K "${site[@]}" || true
}
for name in "$@"; do
  req="$specs/$name.txt"
  if [ ! -f "$req" ]; then
    echo "trainer_envs: no requirement list $req" >&2
    exit 2
  fi
  env_dir="$ROOT/$name"
  stamp="$env_dir/.relay-env-installed"
  want="$(cat "$req" "$specs/constraints.txt" tools/trainer_envs.sh | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  echo "trainer_envs: building $env_dir (a few minutes, once)" >&2
  rm -rf "$env_dir"
  "$PY" -m venv "$env_dir"
  pip=("$env_dir/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" -c "$specs/constraints.txt" -r "$req"
  "$env_dir/bin/python" -m pip uninstall -q -y torchvision >/dev/null 2>&1 || true
  "$env_dir/bin/python" - <<'PY'
import importlib.util
import pathlib

spec = importlib.util.find_spec("torchaudio")
if spec is not None and spec.origin:
    for lib in (pathlib.Path(spec.origin).parent / "lib").glob("*.so"):
        lib.unlink()
PY
  # the environment must import what a trainer imports
  "$env_dir/bin/python" -c "import importlib.util, torch, transformers; importlib.util.find_spec('torchaudio') and __import__('torchaudio')"
  echo "$want" > "$stamp"
  share_identical_files
done
