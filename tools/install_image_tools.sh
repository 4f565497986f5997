#!/usr/bin/env bash
# The Debian packages that building and running the image without a Docker engine needs: buildah
# (builds docker/Dockerfile and runs containers from it) and debootstrap (makes the local Debian base,
# tools/image_base.sh). tools/test.sh calls this before pytest, so CI's fresh machine gets them and the
# image test (tests/deploy/test_image.py) runs there. Idempotent: nothing to do when both are there.
# Where they cannot be installed (not root, no apt-get) it says so and the image test is skipped.
set -euo pipefail
need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap debian-archive-keyring)
((${#need[@]})) || exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_image_tools: ${need[*]} missing, and installing needs root and apt-get; the image tests will be skipped" >&2
  exit 0
fi
echo "install_image_tools: installing ${need[*]} (once per machine)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; then
  apt-get update -q >/dev/null  # a fresh machine may have no package lists yet
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
