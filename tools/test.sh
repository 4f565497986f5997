#!/usr/bin/env bash
# The whole test suite, on a fresh machine: sets up .venv, the browser the dashboard tests drive
# (Debian's chromium and chromedriver) and the third-party trainer environments (tools/trainer_envs.sh,
# cached), then runs pytest (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
# A first run on a machine writes about 10 GB (.venv, the trainer environments, the test image, the tests'
# checkpoints); with less free, say so up front rather than as pip's "No space left on device" later.
free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "${free_gb:-0}" -lt 10 ]; then
  echo "test.sh: only ${free_gb} GB free on $(df -P . | awk 'NR == 2 { print $6 }'); a first run needs about 10 GB" >&2
fi
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
# A build killed midway (a trainer SIGKILLed during its first start) leaves torch's build lock behind, and
# every later build waits on it forever; nothing builds before the tests start, so a lock here is stale.
rm -f "$TORCH_EXTENSIONS_DIR"/*/lock
# Set-up, not test time: DeepSpeed's JIT op built once (cached with the checkout), and the project's
# bytecode written (PYTHONDONTWRITEBYTECODE=1 would otherwise have each of the suite's hundreds of
# worker, commander and trainer processes compile it again).
.venv/bin/python -m relay_testkit.deepspeed_ops 2>&1 | grep -v "real_accelerator" >&2 || true
.venv/bin/python -m compileall -q -j 0 relay trainer_blackbox relay_testkit >/dev/null || true
# Three test processes by default, on 2 cores too (PYTEST_WORKERS=0: one): with two, the waits on real
# workers, commanders and trainers left the cores ~20% idle (10 min 15 s; three: 9 min); work stealing
# keeps every process busy to the end (a few tests take a minute each).
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-3}" --dist worksteal "$@"
