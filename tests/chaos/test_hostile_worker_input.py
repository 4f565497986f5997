"""Hostile configuration for ``relayctl worker``: malformed YAML, wrong types, path traversal in ids, bad
environment values, a wrong shared secret. Each stops the worker before it acquires anything, with one
clear line naming what is wrong, and leaves the commander and the volume untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay_testkit.commander_proc import REPO_ROOT, CommanderProcess

SECRET = "worker-s3cret"

# (case id, YAML config text or None, environment overrides, text the one line must contain)
CASES: list[tuple[str, str | None, dict[str, str], tuple[str, ...]]] = [
    ("yaml-syntax", "run_id: [unclosed\n", {}, ("invalid YAML", "line")),
    ("yaml-not-a-mapping", "- run_id\n- x\n", {}, ("mapping",)),
    ("yaml-binary", "\x00\x01\x02", {}, ("config",)),
    ("unknown-key", "run_idd: r1\n", {}, ("run_idd", "unknown key")),
    ("wrong-type", "grace_s: soon\n", {}, ("grace_s",)),
    ("train-not-mapping", "train: [1, 2]\n", {}, ("train",)),
    ("traversal-run-id", None, {"RUN_ID": "../../etc"}, ("run_id", "RUN_ID")),
    ("dot-run-id", None, {"RUN_ID": ".."}, ("run_id",)),
    ("traversal-worker-id", None, {"WORKER_ID": "a/../b"}, ("worker_id", "WORKER_ID")),
    ("bad-url", None, {"COMMANDER_URL": "ftp://commander"}, ("commander_url", "COMMANDER_URL")),
    ("negative-grace", None, {"GRACE_S": "-5"}, ("grace_s", "GRACE_S")),
    ("not-a-number", None, {"RENEW_SAFETY_MARGIN_S": "1s"}, ("renew_safety_margin_s",)),
    ("bad-mode", None, {"MODE": "dpo"}, ("mode", "MODE")),
    ("bad-remote", None, {"RELAY_REMOTE": "s3://bucket/x"}, ("remote", "RELAY_REMOTE")),
    ("relative-remote", None, {"RELAY_REMOTE": "file://relative/path"}, ("remote",)),
    ("bad-hf-repo", None, {"HF_REPO": "../../x"}, ("hf_repo", "HF_REPO")),
    ("train-env-malformed", None, {"TRAIN": "{max_steps: [1"}, ("train", "TRAIN")),
    ("train-env-list", None, {"TRAIN": "[1, 2]"}, ("train",)),
    ("keep-zero", None, {"CKPT_KEEP_LAST_N": "0"}, ("ckpt_keep_last_n",)),
    ("config-missing", None, {"RELAY_RUN_CONFIG": "/nonexistent/run.yaml"}, ("not found",)),
    # the pod cannot carry a run: refused before acquiring (relay.worker.preflight)
    ("root-in-proc", None, {"RELAY_ROOT": "/proc/relay-x"}, ("relay_root", "/proc/relay-x")),
    ("root-is-a-file", None, {"RELAY_ROOT": "/etc/passwd"}, ("relay_root", "not a directory")),
    ("launcher-missing", None, {"RELAY_TRAINER_DIR": "/nonexistent/x"}, ("trainer_dir", "launch_sft.sh")),
    (
        "launcher-missing-pool",
        None,
        {"RUN_ID": "", "MODE": "rl", "RELAY_TRAINER_DIR": str(REPO_ROOT / "configs")},
        ("trainer_dir", "launch_rl.sh", "does not exist"),
    ),
    ("remote-in-proc", None, {"RELAY_REMOTE": "file:///proc/relay-r"}, ("remote", "file:///proc/relay-r")),
    ("remote-under-a-file", None, {"RELAY_REMOTE": "file:///etc/passwd/r"}, ("remote", "not a directory")),
]


def worker_env(commander_url: str, root: Path, overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    for key in ("RUN_ID", "WORKER_ID", "TRAIN", "MODE", "HF_REPO", "HF_TOKEN", "COMMANDER_URL"):
        env.pop(key, None)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        COMMANDER_URL=commander_url,
        RELAY_SHARED_SECRET=SECRET,
        RUN_ID="hostile",
        WORKER_ID="w-hostile",
        RELAY_ROOT=str(root),
        RELAY_TRAINER="mock",
        COMMANDER_WAIT_S="5",
    )
    env.update(overrides)
    return env


def start_worker(
    tmp_path: Path, name: str, url: str, yaml_text: str | None, overrides: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    root = tmp_path / name / "volume"
    args = [sys.executable, "-m", "relay.cli", "worker"]
    if yaml_text is not None:
        cfg = tmp_path / name / "run.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml_text, encoding="utf-8", errors="surrogateescape")
        args += ["--config", str(cfg)]
    proc = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=worker_env(url, root, overrides),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, root


def runs_at(cmd: CommanderProcess) -> list[str]:
    import json
    import urllib.request

    req = urllib.request.Request(f"{cmd.url}/api/runs", headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return [r["run_id"] for r in json.loads(resp.read())["runs"]]


def test_bad_configs_stop_the_worker_with_one_line_and_acquire_nothing(
    tmp_path: Path, commander_factory: Callable[..., CommanderProcess]
) -> None:
    cmd = commander_factory(secret=SECRET, lease_ttl_s=10.0)
    started = {name: start_worker(tmp_path, name, cmd.url, text, env) for name, text, env, _ in CASES}
    problems = []
    for name, _text, _env, needles in CASES:
        proc, root = started[name]
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            problems.append(f"{name}: still running")
            continue
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        if proc.returncode != 2:
            problems.append(f"{name}: exit {proc.returncode}, stderr {lines[-5:]}")
        elif len(lines) != 1 or "Traceback" in err.decode(errors="replace"):
            problems.append(f"{name}: expected one line, got {lines}")
        elif not all(n.lower() in lines[0].lower() for n in needles):
            problems.append(f"{name}: {lines[0]!r} does not mention {needles}")
        if (root / "runs").exists():
            problems.append(f"{name}: the volume was written to: {list((root / 'runs').iterdir())}")
    assert not problems, "\n".join(problems)
    assert runs_at(cmd) == []  # nothing was acquired, nothing created


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [({"RELAY_SHARED_SECRET": "wrong"}, "secret"), ({"RELAY_SHARED_SECRET": ""}, "secret")],
    ids=["wrong-secret", "missing-secret"],
)
def test_a_wrong_secret_is_one_line_and_acquires_nothing(
    tmp_path: Path, commander_factory: Callable[..., CommanderProcess], overrides: dict[str, str], needle: str
) -> None:
    cmd = commander_factory(secret=SECRET, lease_ttl_s=10.0)
    started = time.monotonic()
    proc, root = start_worker(tmp_path, "w", cmd.url, None, overrides)
    _, err = proc.communicate(timeout=60)
    text = err.decode(errors="replace")
    assert proc.returncode == 5, text
    assert time.monotonic() - started < 30  # refused at once, not retried until commander_wait_s
    assert "Traceback" not in text and needle in text.lower() and "401" in text, text
    assert SECRET not in text
    assert runs_at(cmd) == [] and not (root / "runs").exists()


class FakeCommander:
    """A "commander" that grants whatever run id it is told to: hostile input arriving from the other side."""

    def __init__(self, run_id: str) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.run_id = run_id
        self.port = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def acquire(_req: web.Request) -> web.Response:
            summary = {
                "run_id": run_id,
                "status": "running",
                "epoch": 1,
                "created_at": 0.0,
                "updated_at": 0.0,
            }
            return web.json_response(
                {
                    "granted": True,
                    "run_id": run_id,
                    "lease_id": "x",
                    "epoch": 1,
                    "ttl_s": 30,
                    "renew_interval_s": 10,
                    "run": summary,
                }
            )

        async def anything(_req: web.Request) -> web.Response:
            return web.json_response({"ok": True, "status": "failed", "ttl_s": 30})

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/api/lease/acquire", acquire)
            app.router.add_route("*", "/{tail:.*}", anything)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = self._runner.addresses[0][1]
            ready.set()

        def main() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        import asyncio

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.mark.parametrize("evil", ["../../evil", "..", "a/b", "/abs"])
def test_a_run_id_granted_by_a_hostile_commander_is_refused_before_touching_the_volume(
    tmp_path: Path, evil: str
) -> None:
    fake = FakeCommander(evil)
    try:
        proc, root = start_worker(tmp_path, "w", f"http://127.0.0.1:{fake.port}", None, {"RUN_ID": ""})
        _, err = proc.communicate(timeout=60)
    finally:
        fake.close()
    text = err.decode(errors="replace")
    assert proc.returncode == 5, text
    assert "Traceback" not in text and "unusable run id" in text.strip().splitlines()[-1], text
    assert list(tmp_path.rglob("*")) == [], list(tmp_path.rglob("*"))  # not even the volume was created
