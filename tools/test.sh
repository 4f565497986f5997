#!/usr/bin/env bash
# The whole test suite, on a fresh machine: sets up .venv, the browser the dashboard tests drive
# (Debian's chromium and chromedriver) and the third-party trainer environments (tools/trainer_envs.sh,
# cached), then runs pytest (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
bash tools/install_browser.sh
bash tools/install_image_tools.sh  # buildah + debootstrap for tests/deploy/test_image.py (once per machine)
# the image's slow layers (base, torch, dependencies) are set-up like the venv: built here, cached by a hash
.venv/bin/python -m relay_testkit.image || echo "image: the build failed; tests/deploy/test_image.py will show its log" >&2
bash tools/trainer_envs.sh
export HF_HUB_OFFLINE=0 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 TOKENIZERS_PARALLELISM=false
# DeepSpeed's JIT-built ops of this checkout's venv, kept with it (a shared ~/.cache dir is rebuilt, and
# locked, by every other venv on the machine)
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
exec .venv/bin/python -m pytest "$@"
