"""The image, built from docker/Dockerfile and run for real: the path a Lium/RunPod/`docker run` user takes.

No Docker engine here: buildah builds the Dockerfile (tools/build_image.sh, on the local Debian base of
tools/image_base.sh) and runs containers from it (relay_testkit/container.py: the image's entrypoint,
`-e`/`-v` as the printed line says, host network, tini as PID 1 in its own PID namespace).

The first run on a machine is the COLD path (minutes: debootstrap, then torch and the dependencies);
later runs reuse the base and the dependency layers and rebuild only the project layer (seconds).
Skipped, saying why, only where buildah is missing (tools/install_image_tools.sh, which tools/test.sh
runs, installs it on Debian as root).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay_testkit import image as img
from relay_testkit.container import Container, have_buildah, run_once
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import read_jsonl, step_counts

REPO = Path(__file__).resolve().parents[2]
SECRET = "image-test-secret"

pytestmark = [
    pytest.mark.skipif(
        not (have_buildah() and shutil.which("debootstrap")),
        reason="buildah or debootstrap is not installed: the image cannot be built or run here "
        "(bash tools/install_image_tools.sh installs them; tools/test.sh runs that first)",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the image is built and run with buildah as root (rootless needs subuids)"
    ),
    # The first test pays for the build: a cold one (no image of this cache key yet) takes minutes.
    pytest.mark.timeout(2400),
]


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal even while output is captured: the build kind and times are the report."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[image] {line}")


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("image-build") / "build.log"
    key = img.cache_key()
    if not img.image_exists(f"{img.REPOSITORY}:test-{key}"):
        _say(request.config, f"COLD BUILD: no image for cache key {key}; base + dependencies take minutes")
    built = img.ensure_image(log)
    kind = "cold" if built.cold else "warm (layer cache)"
    _say(request.config, f"{built.tag}: {kind} build in {built.build_s:.1f}s, size {img.size(built.tag)}")
    return built.tag


def dockerfile_user() -> str:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    return users[-1] if users else "root"


def test_version_env_reference_user_and_pid1(image: str, tmp_path: Path) -> None:
    from relay import __version__
    from relay.deploy.envref import reference_markdown

    script = "id -un; cat /proc/1/cmdline | tr '\\0' ' '; echo; relayctl --version; relayctl worker --env-reference"
    code, out = run_once(["docker", "run", image, "sh", "-c", script], tmp_path / "c.log")
    assert code == 0, out
    user, pid1, version, reference = out.split("\n", 3)
    assert user == dockerfile_user()
    assert pid1.split()[:3] == ["tini", "--", "/opt/relay-trainer/docker/entrypoint.sh"]
    assert version == f"relay-trainer {__version__}"
    assert reference == reference_markdown()


GOOD_ENV = {
    "COMMANDER_URL": "http://127.0.0.1:9",
    "RUN_ID": "r1",
    "MODE": "sft",
    "RELAY_REMOTE": "file:///mnt/remote",
    "RELAY_SHARED_SECRET": SECRET,
}
BAD_ENVS = {
    "no-commander": ({"COMMANDER_URL": None}, "", "commander_url: required: set commander_url"),
    "bad-mode": ({"MODE": "ppo"}, "", "mode (env MODE): Input should be 'sft' or 'rl' (got 'ppo')"),
    "read-only-volume": (
        {"RELAY_REMOTE": "file:///srv/remote"},
        ":ro",
        "relay_root: /mnt/relay cannot hold runs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ENVS))
def test_bad_environment_is_one_line_and_exit_2(image: str, tmp_path: Path, case: str) -> None:
    changes, mode, expected = BAD_ENVS[case]
    env = {k: v for k, v in {**GOOD_ENV, **changes}.items() if v is not None}
    argv = ["docker", "run", "-v", f"{tmp_path / 'vol'}:/mnt{mode}"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    code, out = run_once([*argv, image], tmp_path / "c.log")
    assert code == 2, out
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay worker: config error: "), out
    assert expected in lines[0]
    assert list((tmp_path / "vol").iterdir()) == []  # nothing written, nothing acquired


class Pod:
    """A worker container started from the line print-docker-command prints."""

    def __init__(self, image: str, root: Path, name: str, commander_url: str, remote: Path, config: Path):
        self.volume = root / name
        printed = subprocess.run(
            [sys.executable, "-m", "relay.cli", "print-docker-command", "--image", image, "--volume"]
            + [str(self.volume), "--name", name, "--gpus", "none", "--commander-url", commander_url]
            + ["--run-id", "relay", "--worker-id", name, "--remote", f"file://{remote}"]
            + ["--shared-secret", SECRET, "--show-secrets", "--config", str(config)]
            + ["--env", "RELAY_TRAINER=mock"],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        self.argv = shlex.split(printed)
        self.container = Container.from_argv(self.argv, root / f"{name}.log")
        self.run_dir = self.volume / "relay" / "runs" / "relay"  # RELAY_ROOT=/mnt/relay in the image

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "events.jsonl")

    def event(self, name: str, pred: Any = lambda e: True) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"] == name and pred(e)), None)


@pytest.fixture
def commander(image: str, tmp_path: Path) -> Iterator[str]:
    argv = ["docker", "run", "-v", f"{tmp_path / 'commander'}:/state", "-e", f"RELAY_SHARED_SECRET={SECRET}"]
    argv += [image, "serve", "--host", "127.0.0.1", "--port", "0", "--state", "/state/commander_state.db"]
    with Container.from_argv(argv, tmp_path / "commander.log") as c:
        port = wait_for(
            lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)", c.output()),
            60,
            "the commander container to listen",
            c.proc,
            detail=c.output,
        ).group(1)
        yield f"http://127.0.0.1:{port}"
        assert c.stop() == 0, c.output()


def run_detail(url: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/api/runs/relay", headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_two_worker_containers_hand_a_run_over(
    image: str, commander: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "mode: sft\ntrain: {max_steps: 60, save_steps: 10, step_seconds: 0.05}\n"
        "report_interval_s: 0.5\nacquire_backoff_s: 0.1\nacquire_backoff_max_s: 0.3\n"
        "renew_safety_margin_s: 1\nkill_grace_s: 0.5\ngrace_s: 15\ncommander_wait_s: 30\n"
    )
    remote = tmp_path / "shared" / "remote"  # the directory both hosts share
    a = Pod(image, tmp_path, "pod-a", commander, remote, config)
    assert ["-v", f"{remote}:{remote}"] == a.argv[a.argv.index(f"{a.volume}:/mnt") + 1 :][:2]
    assert a.container.line.stop_timeout_s == 45  # grace_s + 30

    started = time.monotonic()
    with a.container as ca:
        wait_for(
            lambda: a.event("checkpoint_synced", lambda e: e["step"] >= 10),  # or later, on a loaded machine
            90,
            "A's first sync",
            ca.proc,
            detail=ca.output,
        )
        acquired_a = a.event("acquired")
        assert acquired_a is not None
        wait_for(lambda: len(read_jsonl(a.run_dir / "progress.jsonl")) >= 14, 30, "14 steps on A", ca.proc)
        pid1 = ca.pid1()
        assert Path(f"/proc/{pid1}/cmdline").read_bytes().split(b"\0")[0] == b"tini"
        assert b"relayctl\0worker" in _child_cmdlines(pid1)  # exec'd: the entrypoint became the worker
        assert ca.stop() == 0, ca.output()  # SIGTERM to PID 1, as docker stop sends it
    ev_a = a.events()
    assert ev_a[-1]["event"] == "preempted" and ev_a[-1]["released"] is True, ev_a[-3:]
    final = ev_a[-1]["checkpoint_step"]
    assert final >= 14  # A had trained 14 steps when it got SIGTERM (below: and saved the step it was on)
    assert [e["step"] for e in ev_a if e["event"] == "checkpoint_synced"][-1] == final
    assert run_detail(commander)["status"] == "preempted"

    b = Pod(image, tmp_path, "pod-b", commander, remote, config)
    assert not b.volume.exists()  # another machine: nothing local
    b_started = time.monotonic()
    with b.container as cb:
        acquired_b = wait_for(lambda: b.event("acquired"), 60, "B to acquire", cb.proc, detail=cb.output)
        b_start_s = time.monotonic() - b_started
        assert cb.wait(90) == 0, cb.output()
    resumed = b.event("resumed")
    assert resumed is not None and resumed["source"] == "remote", b.events()
    assert resumed["step"] == final and resumed["epoch"] == 2 == acquired_b["epoch"]
    mock_a = read_jsonl(a.run_dir / "mock_steps.jsonl")
    mock_b = read_jsonl(b.run_dir / "mock_steps.jsonl")
    assert step_counts(mock_a) == {s: 1 for s in range(1, final + 1)}  # A saved the step it was on
    assert step_counts(mock_b) == {s: 1 for s in range(final + 1, 61)}  # no step trained twice
    assert b.events()[-1]["event"] == "completed"
    assert run_detail(commander)["status"] == "completed"
    _say(
        request.config,
        f"worker container start to lease: {b_start_s:.1f}s; whole handoff test {time.monotonic() - started:.1f}s",
    )


def _child_cmdlines(pid: int) -> bytes:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return b"\n".join(Path(f"/proc/{k}/cmdline").read_bytes() for k in kids)


def test_build_cache_rebuilds_only_what_changed(image: str, tmp_path: Path) -> None:
    """A code edit rebuilds only the project layers; a pyproject.toml edit reruns the dependency step."""
    context = img.copy_context(tmp_path / "context")
    cli = context / "relay" / "cli.py"
    cli.write_text(cli.read_text() + "\n# an edit\n")
    tag = f"{img.REPOSITORY}:cache-probe"
    code, _ = img.build(context, tag, tmp_path / "code-edit.log")
    log = (tmp_path / "code-edit.log").read_text()
    assert code == 0, log[-3000:]
    try:
        before, after = img.layers(image), img.layers(tag)
        assert len(before) == len(after)
        same = [x == y for x, y in zip(before, after, strict=True)]
        assert same == [True] * (len(same) - 2) + [False, False], same  # COPY . . and the project install
        steps = _steps(log)
        deps = next(i for i, s in enumerate(steps) if 'pip install -c constraints.txt "setuptools' in s[0])
        assert all(cached for _, cached in steps[1 : deps + 1]), steps  # base .. dependencies: cache
        assert not steps[deps + 1][1] and steps[deps + 1][0].startswith("COPY . .")
    finally:
        subprocess.run(["buildah", "rmi", tag], capture_output=True, timeout=120)

    # A new dependency: the dependency step must run again (here it fails at once: the wheel is absent).
    pyproject = context / "pyproject.toml"
    probe = "relay-cache-probe @ file:///nonexistent/relay_cache_probe-0-py3-none-any.whl"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = [\n", f'dependencies = [\n    "{probe}",\n', 1)
    )
    code, _ = img.build(context, tag, tmp_path / "dep-edit.log")
    log = (tmp_path / "dep-edit.log").read_text()
    assert code != 0
    steps = _steps(log)
    copy = next(i for i, s in enumerate(steps) if s[0].startswith("COPY pyproject.toml"))
    assert all(cached for _, cached in steps[1:copy]), steps
    assert not steps[copy + 1][1]  # the dependency step ran (its COPY may be cached from an earlier probe)...
    assert "/nonexistent/relay_cache_probe-0-py3-none-any.whl" in log  # ...and pip met the new dependency


def _steps(log: str) -> list[tuple[str, bool]]:
    """(instruction, served from cache) for each STEP of a buildah build log."""
    out = []
    for block in re.split(r"^STEP \d+/\d+: ", log, flags=re.M)[1:]:
        first, _, rest = block.partition("\n")
        out.append((first, rest.startswith("--> Using cache")))
    return out
