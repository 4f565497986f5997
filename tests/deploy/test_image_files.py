"""Static checks of docker/Dockerfile and .dockerignore (no Docker daemon in the test run)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")


def _instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [ln.split(None, 1)[1] for ln in joined.splitlines() if ln.split(None, 1)[:1] == [name]]


def test_cuda_pytorch_base_and_training_extras() -> None:
    assert re.search(r"BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\w.]+-cudnn\d+-(runtime|devel)", DOCKERFILE)
    assert _instructions("FROM") == ["${BASE_IMAGE}"]
    assert any('".[train,deepspeed]"' in run for run in _instructions("RUN"))


def test_one_dockerfile_for_both_bases() -> None:
    """The base's torch when it has one, else TORCH_SPEC (the torch this project pins everywhere)."""
    assert _instructions("ARG")[1:] == ["TORCH_SPEC=torch==2.13.0", "WHEELS="]
    (torch,) = [run for run in _instructions("RUN") if "$TORCH_SPEC" in run]
    assert 'if ! python -c "import torch"' in torch and "constraints.txt" in torch
    assert "--system-site-packages" in torch  # the CUDA base's torch stays visible in the venv


def test_layers_are_ordered_for_the_cache() -> None:
    """Dependencies from pyproject.toml alone; the code (and README, version) only in the last layers."""
    assert _instructions("COPY") == ["pyproject.toml ./", ". ."]
    runs = _instructions("RUN")
    deps = next(i for i, run in enumerate(runs) if '".[train,deepspeed]"' in run)
    assert runs[deps].startswith("--mount=type=cache,target=/root/.cache/pip")
    assert "--no-deps" in runs[deps + 1] and "-e ." in runs[deps + 1]
    assert _instructions("USER") == ["root"]


def test_entrypoint_volume_and_roles() -> None:
    (entrypoint,) = _instructions("ENTRYPOINT")
    assert "/opt/relay-trainer/docker/entrypoint.sh" in entrypoint
    assert _instructions("VOLUME") == ['["/mnt"]']
    assert _instructions("CMD") == ['["worker"]']


def test_copied_paths_exist_and_no_secret_defaults() -> None:
    for copy in _instructions("COPY"):
        *sources, _dest = copy.split()
        for src in sources:
            if src != ".":
                assert (REPO / src).exists(), src
    env_text = " ".join(_instructions("ENV"))
    for secret in ("HF_TOKEN", "RELAY_SHARED_SECRET", "COMMANDER_URL", "MODE="):
        assert secret not in env_text
    assert "RELAY_ROOT=/mnt/relay" in env_text


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".git", ".venv", "tests", "**/__pycache__", ".pytest_cache"} <= ignored
    for needed in ("relay", "trainer_blackbox", "docker", "configs", "pyproject.toml", "README.md"):
        assert needed not in ignored


def _dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern as a regex, is an exception) per line, in order: Docker's rule is the last match wins."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex + r"\Z"), negated))
    return rules


def _in_image(rel: str) -> bool:
    """Whether the build context holds ``rel``: a pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    kept = True
    for regex, negated in _dockerignore_rules():
        if any(regex.match(c) for c in candidates):
            kept = negated
    return kept


def test_the_image_keeps_the_harness_bench_imports() -> None:
    imported = set()
    for path in sorted((REPO / "bench").glob("*.py")):
        assert not re.findall(r"^\s*(?:from|import) tests\b", path.read_text(), re.M), f"{path} imports tests"
        imported |= set(re.findall(r"^\s*(?:from|import) (relay_testkit(?:\.\w+)+)", path.read_text(), re.M))
    assert {"relay_testkit.commander_proc", "relay_testkit.workerproc"} <= imported
    for module in sorted(imported | {"relay_testkit"}):
        rel = module.replace(".", "/")
        rel = rel + "/__init__.py" if (REPO / rel).is_dir() else rel + ".py"
        assert (REPO / rel).exists(), rel
        assert _in_image(rel), f"{rel} is imported by bench/ but .dockerignore leaves it out"
    for rel in (
        "tests/worker/test_e2e.py",
        "tests/chaos/test_partition.py",
        "tests/conftest.py",
        "tests/__init__.py",
    ):
        assert not _in_image(rel), rel
    for rel in (
        "relay_testkit/__pycache__/x.pyc",
        "relay/__pycache__/x.pyc",
        ".venv/bin/python",
        ".git/HEAD",
        ".cache/envs/llamafactory/bin/python",  # the checkout's caches are gigabytes
        ".cache/torch_extensions/py311_cpu/x.so",
        "artifacts/screenshots/run-page.png",
    ):
        assert not _in_image(rel), rel
    assert _in_image("relay/worker/main.py") and _in_image("bench/lease_bench.py")


def test_bench_helpers_import_without_pytest() -> None:
    """The image installs no test extras: the helpers bench/ imports must not need pytest at import time."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytest'] = None\n"  # any `import pytest` now raises ImportError
        "import relay_testkit.commander_proc, relay_testkit.chaos_cluster, relay_testkit.hub_server\n"
        "import relay_testkit.workerproc\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
