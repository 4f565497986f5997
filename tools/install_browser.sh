#!/usr/bin/env bash
# Install the headless browser the dashboard tests drive: Debian's chromium and its chromedriver.
# Idempotent and cheap when both are there (two `command -v`, no apt call). Needs root (CI runs as root);
# without root or without apt it says so and exits 0, and the browser tests skip, saying chromium is missing.
set -euo pipefail
have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; install chromium and chromedriver yourself (browser tests are skipped)" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_browser: not root; run: sudo apt-get install chromium chromium-driver (browser tests are skipped)" >&2
  exit 0
fi
echo "install_browser: installing Debian's chromium and chromium-driver for the dashboard tests (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (unattended upgrades, a parallel job) instead of failing on its lock.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
if ! apt_get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2; then
  echo "install_browser: apt-get install failed; refreshing the package lists and trying again" >&2
  apt_get update >&2
  apt_get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2
fi
have
echo "install_browser: $(chromium --version 2>/dev/null || echo chromium), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)" >&2
