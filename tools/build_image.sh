#!/usr/bin/env bash
# Build docker/Dockerfile without a Docker engine, with buildah, the way `docker build` would.
#
#   bash tools/build_image.sh [--base cuda|debian] [--tag REF] [--wheels DIR] [BUILDAH_ARG...]
#
#   --base cuda     (default) the Dockerfile's CUDA PyTorch base, pulled from its registry
#   --base debian   a local Debian/Python base made by tools/image_base.sh; torch==2.13.0 is installed
#   --tag REF       the image reference (default localhost/relay-trainer:<version>-<base>)
#   --wheels DIR    a directory of wheels the build may install from (mounted read-only; e.g. a CPU torch)
#   BUILDAH_ARG...  passed on to `buildah build` (e.g. --build-arg TORCH_SPEC=torch==2.9.1)
#
# Progress goes to stderr; the image reference is the last line on stdout. Layers are cached
# (`--layers`): a code change rebuilds only the last layers, a pyproject.toml change the
# dependency layer too. Push with `buildah push REF docker://<user>/relay-trainer:TAG`.
set -euo pipefail
cd "$(dirname "$0")/.."

base=cuda tag="" wheels="" extra=()
while (($#)); do
  case $1 in
    --base) base=${2:?--base needs cuda or debian}; shift 2 ;;
    --tag) tag=${2:?--tag needs an image reference}; shift 2 ;;
    --wheels) wheels=${2:?--wheels needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
command -v buildah >/dev/null || {
  echo "build_image: buildah is not installed (bash tools/install_image_tools.sh, as root on Debian)" >&2
  exit 2
}
args=(--isolation chroot --network host --layers --force-rm -f docker/Dockerfile)
case $base in
  cuda) ;;
  debian) args+=(--build-arg "BASE_IMAGE=$(bash tools/image_base.sh | tail -n 1)") ;;
  *) echo "build_image: --base must be cuda or debian (got '$base')" >&2; exit 2 ;;
esac
if [[ -n $wheels ]]; then
  [[ -d $wheels ]] || { echo "build_image: --wheels $wheels is not a directory" >&2; exit 2; }
  args+=(--volume "$(cd "$wheels" && pwd):/wheels:ro" --build-arg WHEELS=/wheels)
fi
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' relay/__init__.py)
tag=${tag:-localhost/relay-trainer:$version-$base}
buildah build "${args[@]}" "${extra[@]}" -t "$tag" . >&2
echo "$tag"
