#!/usr/bin/env bash
# A local Debian bookworm + Python 3.11 base for docker/Dockerfile (BASE_IMAGE), made from Debian's
# packages with debootstrap and committed with buildah: for building the image where no registry
# image can be pulled. Prints the image reference as its last line.
#
# The reference carries a hash of this recipe and of the host's CA bundle, so an existing base is
# reused (a few milliseconds) and a changed recipe makes a new one (minutes: debootstrap). The
# host's CA bundle is copied in so that pip and apt inside `RUN` trust what the host trusts.
#
#   RELAY_DEBIAN_MIRROR   the Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail
suite=bookworm
mirror=${RELAY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,ca-certificates
ca=/etc/ssl/certs/ca-certificates.crt
debs=/var/cache/relay-image/debootstrap  # downloaded .debs, kept for the next recipe change

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "image_base: needs buildah and debootstrap (bash tools/install_image_tools.sh)" >&2
  exit 2
fi
key=$(cat "${BASH_SOURCE[0]}" "$ca" | sha256sum | cut -c1-12)
ref=localhost/relay-base:$suite-$key
if buildah inspect --type image "$ref" >/dev/null 2>&1; then
  echo "$ref"
  exit 0
fi

echo "image_base: making $ref with debootstrap ($suite: $packages); this takes minutes, once" >&2
ctr=$(buildah from --quiet scratch)
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
root=$(buildah mount "$ctr")
mkdir -p "$debs"
debootstrap --variant=minbase --include="$packages" --cache-dir="$debs" "$suite" "$root" "$mirror" >&2
cp "$ca" "$root$ca"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*.log
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
  --cmd '["python3"]' --label "relay.base-recipe=$key" "$ctr"
buildah commit --quiet --rm "$ctr" "$ref" >/dev/null
trap - EXIT
echo "$ref"
