"""The relay-trainer image, built for tests and benches with tools/build_image.sh on the local Debian base.

:func:`ensure_image` builds it under a tag keyed by a hash of what decides its slow layers: the
Dockerfile, pyproject.toml and the base recipe (tools/image_base.sh). When an image with that tag
exists, the build is warm: buildah's layer cache (``--layers``) reuses the base, torch and dependency
layers and rebuilds at most the project layer (seconds). When it does not, the build is COLD: the
base is made with debootstrap if its recipe changed, and the dependencies are installed (minutes).
Either way the build runs, so the image always holds the code of this checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY_FILES = ("docker/Dockerfile", "pyproject.toml", "tools/image_base.sh")
REPOSITORY = "localhost/relay-trainer"
# A CPU build of torch==2.13.0 on disk: the image installs it from here rather than PyPI's CUDA build.
WHEELS = Path(os.environ.get("RELAY_IMAGE_WHEELS", "/opt/wheels"))


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    key: str
    cold: bool  # no image of this key existed: the base and dependency layers may have been built
    build_s: float
    log_path: Path


class ImageBuildError(RuntimeError):
    """tools/build_image.sh failed; the message ends with the tail of its log."""


def cache_key(root: Path = REPO_ROOT) -> str:
    digest = hashlib.sha256()
    for rel in KEY_FILES:
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_exists(ref: str) -> bool:
    return image_id(ref) is not None


def build(context: Path, tag: str, log_path: Path, *extra: str) -> tuple[int, float]:
    """tools/build_image.sh --base debian on ``context``: (exit status, seconds). Output to ``log_path``."""
    argv = ["bash", str(context / "tools" / "build_image.sh"), "--base", "debian", "--tag", tag]
    if any(WHEELS.glob("torch-2.13.0*.whl")):
        argv += ["--wheels", str(WHEELS)]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.run(argv + list(extra), stdout=log, stderr=subprocess.STDOUT, cwd=context)
    return proc.returncode, time.monotonic() - started


def ensure_image(log_path: Path) -> BuiltImage:
    """Build (or re-use) the test image of this checkout; raises ImageBuildError with the log's tail."""
    key = cache_key()
    tag = f"{REPOSITORY}:test-{key}"
    previous = image_id(tag)
    cold = previous is None
    code, seconds = build(REPO_ROOT, tag, log_path)
    if code != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise ImageBuildError(f"tools/build_image.sh failed ({code}); log {log_path}:\n{tail}")
    if previous and previous != image_id(tag):
        # the tag moved to a new code layer: the old image is left untagged, 1.7 GB a checkout
        subprocess.run(["buildah", "rmi", previous], capture_output=True, timeout=120)
    _drop_older_test_tags(keep=tag)
    return BuiltImage(tag=tag, key=key, cold=cold, build_s=seconds, log_path=log_path)


def image_id(ref: str) -> str | None:
    """The full id of the image ``ref`` names, or None when there is none."""
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def _drop_older_test_tags(keep: str) -> None:
    """Remove test images of older keys, so their big layers can go (buildah keeps shared ones).

    Every checkout and every edit of the key files builds under a new tag; a test machine that keeps its
    disk between runs would otherwise gain 1.7 GB per key."""
    proc = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for ref in proc.stdout.split():
        if ref.startswith(f"{REPOSITORY}:test-") and ref != keep:
            subprocess.run(["buildah", "rmi", ref], capture_output=True, timeout=120)


def inspect(ref: str) -> dict:
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, timeout=60)
    return json.loads(proc.stdout)


def layers(ref: str) -> list[str]:
    """The image's layer diff ids, bottom first."""
    return list(inspect(ref)["OCIv1"]["rootfs"]["diff_ids"])


def size(ref: str) -> str:
    """The image's uncompressed size (what a pod unpacks), as buildah reports it, e.g. "1.74 GB"."""
    proc = subprocess.run(["buildah", "images", "--json", ref], capture_output=True, text=True, timeout=60)
    return str(json.loads(proc.stdout)[0]["size"])


def copy_context(dest: Path) -> Path:
    """The build context as git sees it (tracked and untracked-not-ignored files), copied to ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    for raw in files:
        rel = raw.decode()
        if not rel or rel.startswith("tests/") or not (REPO_ROOT / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    return dest


def prewarm() -> int:
    """``python -m relay_testkit.image``: build the test image before the suite runs (tools/test.sh).

    The image's slow layers (the debootstrap base, torch and the dependencies) are set-up, like the venv:
    building them here, with progress on the terminal, leaves the image test a warm build of this
    checkout's code layer.  Without buildah, debootstrap or root there is nothing to do (the test then
    skips, saying why)."""
    import sys

    from relay_testkit.container import have_buildah

    if not (have_buildah() and shutil.which("debootstrap")) or os.geteuid() != 0:
        print("image: buildah/debootstrap or root missing; the image test will be skipped", file=sys.stderr)
        return 0
    key = cache_key()
    cold = not image_exists(f"{REPOSITORY}:test-{key}")
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"relay-image-build-{key}.log"
    what = "COLD: debootstrap base + dependencies, several minutes" if cold else "warm: layer cache"
    print(f"image: building the test image {REPOSITORY}:test-{key} ({what}); log {log_path}", file=sys.stderr)
    try:
        built = ensure_image(log_path)
    except ImageBuildError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(f"image: {built.tag} ready in {built.build_s:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(prewarm())
