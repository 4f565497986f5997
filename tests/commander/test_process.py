"""A real `relayctl serve` subprocess: kill -9 and restart, SIGTERM, SIGSTOP, locking, refusal to listen."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.client import CommanderClient, CommanderUnreachable, LeaseHeld
from relay.commander.serve import is_loopback
from relay.schema import AcquireRequest, ReleaseRequest, RenewRequest, ReportRequest, RunStatus
from relay_testkit.commander_proc import REPO_ROOT, CommanderProcess, CommanderStartError
from tests.commander.calls import SECRET


async def held_retry_after(c: CommanderClient, run_id: str) -> float:
    with pytest.raises(LeaseHeld) as held:
        await c.acquire(AcquireRequest(run_id=run_id, worker_id="intruder"))
    return held.value.retry_after_s


async def test_kill9_restart_keeps_runs_leases_epochs_events_and_refreshes_live_leases(commander_factory):
    ttl = 2.5
    cmd = commander_factory(lease_ttl_s=ttl, secret=SECRET)
    async with CommanderClient(cmd.url, SECRET) as c:
        g1 = await c.acquire(AcquireRequest(run_id="r1", worker_id="w1", mode="sft"))
        await c.report(
            "r1",
            ReportRequest(
                worker_id="w1",
                lease_id=g1.lease_id,
                epoch=1,
                step=5,
                checkpoint={"step": 5, "path": "/ck/5"},
                event="checkpoint_committed",
            ),
        )
        g2 = await c.acquire(AcquireRequest(run_id="r2", worker_id="w2"))
        await c.release(
            ReleaseRequest(run_id="r2", worker_id="w2", lease_id=g2.lease_id, epoch=1, outcome="completed")
        )
        g3 = await c.acquire(AcquireRequest(run_id="r3", worker_id="w3"))
        await c.release(
            ReleaseRequest(run_id="r3", worker_id="w3", lease_id=g3.lease_id, epoch=1, outcome="preempted")
        )

        # Let r1's lease run down to 1 s, then kill -9 the commander.
        deadline = time.monotonic() + 10
        while await held_retry_after(c, "r1") > 1.0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        crashed_at = time.monotonic()
        cmd.restart()

        # The live lease got a full TTL when the new commander loaded it (after crashed_at), so at least
        # ttl - (time since the crash) is left; without the refresh less than 1 s - that time would be.
        left = await held_retry_after(c, "r1")
        assert left >= ttl - (time.monotonic() - crashed_at) - 0.05, left
        assert (await c.renew(RenewRequest(run_id="r1", worker_id="w1", lease_id=g1.lease_id, epoch=1))).ok

        runs = {r.run_id: r for r in await c.list_runs()}
        assert (runs["r1"].status, runs["r1"].epoch, runs["r1"].holder, runs["r1"].step) == (
            RunStatus.running,
            1,
            "w1",
            5,
        )
        assert runs["r1"].latest_checkpoint.path == "/ck/5"
        assert runs["r2"].status is RunStatus.completed and runs["r3"].status is RunStatus.preempted
        events = [e.name for e in (await c.get_run("r1")).events]
        assert events == ["acquired", "checkpoint_committed"]

        # Epochs survived: the next grant of r3 is epoch 2.
        assert (await c.acquire(AcquireRequest(run_id="r3", worker_id="w4"))).epoch == 2

        # w1 stops renewing: after one TTL, r1 goes to the next worker with a higher epoch.
        deadline = time.monotonic() + 10 * ttl
        while True:
            try:
                g = await c.acquire(AcquireRequest(run_id="r1", worker_id="w5"))
                break
            except LeaseHeld:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert g.epoch == 2 and g.run.step == 5


async def test_sigterm_is_graceful_and_concurrent_acquires_grant_one(commander_factory):
    cmd = commander_factory()
    async with CommanderClient(cmd.url) as c:

        async def try_acquire(i: int):
            try:
                return await c.acquire(AcquireRequest(run_id="hot", worker_id=f"w{i}"))
            except LeaseHeld:
                return None

        results = await asyncio.gather(*(try_acquire(i) for i in range(40)))
        assert sum(r is not None for r in results) == 1
    assert cmd.terminate() == 0
    assert "shutting down" in cmd.output()
    wal = Path(str(cmd.state_path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # WAL checkpointed on the way out
    cmd.start()
    async with CommanderClient(cmd.url) as c:
        assert (await c.get_run("hot")).epoch == 1


async def test_a_stopped_commander_times_out_and_recovers(commander_factory):
    cmd = commander_factory()
    async with CommanderClient(cmd.url, timeout_s=0.5) as c:
        assert (await c.health()).ok
        cmd.pause()
        try:
            with pytest.raises(CommanderUnreachable, match="did not answer"):
                await c.health()
        finally:
            cmd.resume()
        assert (await c.health()).ok


def test_second_commander_on_the_same_state_is_refused(commander_factory, tmp_path):
    first = commander_factory(state_path=tmp_path / "shared.db")
    second = CommanderProcess(tmp_path / "shared.db", log_path=tmp_path / "second.log")
    with pytest.raises(CommanderStartError) as exc:
        second.start(timeout_s=15)
    assert "in use by another commander" in str(exc.value)
    assert second.proc is not None and second.proc.returncode == 1
    assert "Traceback" not in second.output()
    assert first.health_ok()


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    full_env.update({"PYTHONPATH": str(REPO_ROOT), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=30,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--host", "0.0.0.0"],
            {},
            "refusing to listen on non-loopback address '0.0.0.0' without a shared secret",
        ),
        (["--lease-ttl", "0"], {}, "--lease-ttl must be a positive number of seconds, at least 1"),
        (["--lease-ttl", "0.5"], {}, "at least 1 (got 0.5)"),
        ([], {"RELAY_LEASE_TTL": "0.2"}, "at least 1 (got 0.2)"),
        (["--lease-ttl", "nan"], {}, "at least 1 (got nan)"),
        ([], {"RELAY_LEASE_TTL": "soon"}, "RELAY_LEASE_TTL must be a number of seconds"),
        (["--port", "70000"], {}, "--port must be 0-65535 (got 70000)"),
        (["--state", "/nonexistent-dir/x.db"], {}, "state directory /nonexistent-dir does not exist"),
    ],
    ids=["non-loopback", "ttl-zero", "ttl-half", "ttl-env-short", "ttl-nan", "ttl-env", "port", "state-dir"],
)
def test_serve_refuses_bad_settings_with_one_line(args, env, message, tmp_path):
    if "--state" not in args:
        args = [*args, "--state", str(tmp_path / "s.db")]
    result = serve(*args, "--port", "0", env=env) if "--port" not in args else serve(*args, env=env)
    assert result.returncode in (1, 2), result
    if "--lease-ttl" in args or "RELAY_LEASE_TTL" in env:
        assert result.returncode == 2, result  # a configuration error
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_loopback_rule():
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "example.com", "192.168.1.5"):
        assert not is_loopback(host), host


def test_state_and_secret_come_from_the_environment(tmp_path):
    from argparse import Namespace

    from relay.commander.serve import resolve_settings

    secret = "s3cr3t-from-env"
    args = Namespace(
        state=None, shared_secret=None, lease_ttl_s=None, port="0", host="10.1.2.3", insecure=False
    )
    env = {"RELAY_STATE": str(tmp_path / "e.db"), "RELAY_SHARED_SECRET": secret, "RELAY_LEASE_TTL": "12.5"}
    config = resolve_settings(args, env)
    assert (config.state, config.secret(), config.lease_ttl_s, config.port) == (
        str(tmp_path / "e.db"),
        secret,
        12.5,
        0,
    )
    assert secret not in repr(config) and secret not in str(config.model_dump())  # never shown
    config = resolve_settings(Namespace(**{**vars(args), "host": "127.0.0.1"}), {})
    assert (config.state, config.secret(), config.lease_ttl_s) == ("./commander_state.db", None, 60.0)
    # a flag wins over the environment; an empty variable counts as unset
    flagged = Namespace(**{**vars(args), "state": "flag.db", "lease_ttl_s": "30"})
    config = resolve_settings(flagged, env)
    assert (config.state, config.lease_ttl_s, config.secret()) == ("flag.db", 30.0, secret)
    unset = resolve_settings(
        Namespace(**{**vars(args), "host": "::1"}), {"RELAY_STATE": "", "RELAY_LEASE_TTL": " "}
    )
    assert (unset.state, unset.lease_ttl_s) == ("./commander_state.db", 60.0)
