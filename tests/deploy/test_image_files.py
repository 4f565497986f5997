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
