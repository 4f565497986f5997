#!/usr/bin/env bash
# The whole test suite, on a fresh machine: sets up .venv and the browser the dashboard tests drive
# (Debian's chromium and chromedriver), then runs pytest (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
bash tools/install_browser.sh
bash tools/install_image_tools.sh  # buildah + debootstrap for tests/deploy/test_image.py (once per machine)
# the image's slow layers (base, torch, dependencies) are set-up like the venv: built here, cached by a hash
.venv/bin/python -m relay_testkit.image || echo "image: the build failed; tests/deploy/test_image.py will show its log" >&2
export HF_HUB_OFFLINE=0 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
