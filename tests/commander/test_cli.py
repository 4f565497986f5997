"""`relayctl status` and `relayctl cancel` against a real commander subprocess: output and error lines."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from relay.cli import main
from relay.client import CommanderClient
from relay.schema import AcquireRequest, ReleaseRequest, ReportRequest
from relay_testkit.commander_proc import REPO_ROOT, CommanderProcess
from tests.commander.calls import SECRET, closed_port


@pytest.fixture(scope="module")
def commander(tmp_path_factory):
    """One commander with a secret and runs r-run (running, step 12), r-wait (preempted), r-done (completed).

    The c-* runs are the same three for the cancel test alone, so tests stay independent in any order.
    """
    proc = CommanderProcess(tmp_path_factory.mktemp("cli") / "state.db", secret=SECRET).start()

    async def seed() -> None:
        async with CommanderClient(proc.url, SECRET) as c:
            g = await c.acquire(AcquireRequest(run_id="r-run", worker_id="pod-a", mode="sft"))
            await c.report(
                "r-run",
                ReportRequest(
                    worker_id="pod-a",
                    lease_id=g.lease_id,
                    epoch=1,
                    step=12,
                    checkpoint={"step": 10, "path": "/ck/10"},
                    remote_step=8,
                    metrics={"loss": 0.25},
                    event="checkpoint_committed",
                    message="step 10",
                ),
            )
            g = await c.acquire(AcquireRequest(run_id="c-run", worker_id="pod-a"))
            for run_id, outcome in (
                ("r-wait", "preempted"),
                ("r-done", "completed"),
                ("c-wait", "preempted"),
                ("c-done", "completed"),
            ):
                g = await c.acquire(AcquireRequest(run_id=run_id, worker_id="pod-b"))
                await c.release(
                    ReleaseRequest(
                        run_id=run_id, worker_id="pod-b", lease_id=g.lease_id, epoch=1, outcome=outcome
                    )
                )

    asyncio.run(seed())
    yield proc
    proc.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("COMMANDER_URL", "RELAY_SHARED_SECRET"):
        monkeypatch.delenv(name, raising=False)


def relayctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_table(commander, capsys):
    code, out, err = relayctl(capsys, "status", "--commander-url", commander.url, "--secret", SECRET)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"commander {commander.url}: ok (version ") and "6 run(s)" in lines[0]
    assert lines[1].split() == ["RUN", "STATUS", "EPOCH", "HOLDER", "STEP", "CHECKPOINT", "REMOTE", "RENEWED"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["r-run"][:7] == ["r-run", "running", "1", "pod-a", "12", "10", "8"]
    assert rows["r-run"][7].endswith("s") and rows["r-run"][8] == "ago"
    assert rows["r-wait"] == ["r-wait", "preempted", "1", "-", "-", "-", "-", "-"]
    assert rows["r-done"][1] == "completed"


def test_status_of_one_run_shows_detail_and_events(commander, capsys, monkeypatch):
    monkeypatch.setenv("COMMANDER_URL", commander.url)
    monkeypatch.setenv("RELAY_SHARED_SECRET", SECRET)
    code, out, _ = relayctl(capsys, "status", "r-run")
    assert code == 0
    assert "run r-run (sft)" in out and "holder       pod-a" in out
    assert "checkpoint   step 10  /ck/10" in out and "remote step  8" in out and "loss=0.25" in out
    assert (
        "recent events:" in out and "acquired pod-a" in out and "checkpoint_committed pod-a  step 10" in out
    )


def test_status_json(commander, capsys):
    code, out, _ = relayctl(capsys, "status", "--json", "--commander-url", commander.url, "--secret", SECRET)
    data = json.loads(out)
    assert code == 0 and data["commander"]["ok"] is True
    statuses = {r["run_id"]: r["status"] for r in data["runs"]}
    assert {k: v for k, v in statuses.items() if k.startswith("r-")} == {
        "r-run": "running",
        "r-wait": "preempted",
        "r-done": "completed",
    }
    code, out, _ = relayctl(
        capsys, "status", "r-wait", "--json", "--commander-url", commander.url, "--secret", SECRET
    )
    assert json.loads(out)["run"]["events"][-1]["name"] == "preempted"


def test_cancel_output_and_errors(commander, capsys):
    base = ["--commander-url", commander.url, "--secret", SECRET]
    code, out, _ = relayctl(capsys, "cancel", "c-wait", *base)
    assert (code, out.strip()) == (0, "run c-wait cancelled")
    code, out, _ = relayctl(capsys, "cancel", "c-run", *base)
    assert code == 0 and out.strip() == (
        "cancel requested for run c-run (running); the holder pod-a stops at its next renew"
    )
    code, out, err = relayctl(capsys, "cancel", "c-done", *base)
    assert (
        code == 1 and out == "" and err.strip() == "relayctl cancel: error: run c-done is already completed"
    )
    code, _, err = relayctl(capsys, "cancel", "nope", *base)
    assert code == 1 and err.strip() == "relayctl cancel: error: no run nope"
    code, _, err = relayctl(capsys, "status", "../x", *base)
    assert code == 1 and err.startswith("relayctl status: error: run_id: ") and len(err.splitlines()) == 1


def test_wrong_or_missing_secret_is_one_line(commander, capsys):
    for extra in ([], ["--secret", "wrong"]):
        code, out, err = relayctl(capsys, "status", "--commander-url", commander.url, *extra)
        assert code == 1 and out == ""
        assert err.startswith("relayctl status: error: ") and "401" in err and len(err.splitlines()) == 1
    code, _, err = relayctl(capsys, "cancel", "c-run", "--commander-url", commander.url)
    assert code == 1 and "401" in err


def test_unreachable_commander_is_one_line_without_traceback():
    url = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDER_URL", "RELAY_SHARED_SECRET")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    for argv in (["status"], ["cancel", "r1"]):
        result = subprocess.run(
            [sys.executable, "-m", "relay.cli", *argv, "--commander-url", url],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            cwd=REPO_ROOT,
        )
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(f"relayctl {argv[0]}: error: commander at {url} is unreachable")
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_url_is_one_line(capsys):
    code, _, err = relayctl(capsys, "status", "--commander-url", "localhost:8080")
    assert code == 2 and err.strip() == (
        "relayctl status: error: commander URL must start with http:// or https:// (got 'localhost:8080')"
    )
