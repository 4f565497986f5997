"""The lease timing rule (relay/worker/timing.py): TTL, renew interval, margin and kill grace as one unit.

Unsafe combinations are refused before anything trains: the worker's own pair at start (exit 2, nothing
acquired), and a grant whose TTL the pair does not fit (the lease is handed back, nothing trained), each
with a message naming the value to change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, validate_config
from relay.worker.timing import lease_problem, margin_problem, required_margin_s
from relay_testkit.workerproc import WorkerProc

REPO = Path(__file__).resolve().parents[2]


def test_the_margin_must_cover_the_kill_grace_and_the_worst_case_slack() -> None:
    assert margin_problem(5.0, 3.0) is None  # the defaults
    assert margin_problem(1.0, 0.5) is None
    problem = margin_problem(1.0, 3.0)
    assert problem is not None and "RENEW_SAFETY_MARGIN_S to 3.25 or more" in problem
    assert "lower KILL_GRACE_S to 0.75 or less" in problem
    # no cap at a third of the TTL any more: a short TTL needs a short kill grace, not a shorter margin
    assert required_margin_s(3.0, ttl_s=3.0) == pytest.approx(3.0 + 0.25 + 0.0015)


def test_a_grant_must_leave_room_for_the_kill_and_for_two_renewals() -> None:
    assert lease_problem(60.0, 20.0, 5.0, 3.0) is None  # the defaults
    assert lease_problem(3.0, 1.0, 1.0, 0.5) is None  # the chaos suite's
    short = lease_problem(3.0, 1.0, 5.0, 3.0)  # the old rule's unsafe case: margin capped to 1 s < kill grace
    assert short is not None and "raise the commander's --lease-ttl to 15s or more" in short
    tight = lease_problem(1.0, 1.0 / 3, 1.0, 0.5)
    assert tight is not None and "--lease-ttl" in tight and "RENEW_SAFETY_MARGIN_S" in tight
    hour = lease_problem(3600.0, 1200.0, 5.0, 3.0)  # clock drift grows with the TTL
    assert hour is not None and "needs renew_safety_margin_s >= 5.05s" in hour


def test_the_config_refuses_a_margin_shorter_than_the_kill_grace_needs() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config(
            {"commander_url": "http://c:1", "renew_safety_margin_s": 2, "kill_grace_s": 3},
            {"renew_safety_margin_s": "env RENEW_SAFETY_MARGIN_S"},
        )
    text = str(exc.value)
    assert exc.value.key == "renew_safety_margin_s" and "env RENEW_SAFETY_MARGIN_S" in text
    assert "RENEW_SAFETY_MARGIN_S to 3.25 or more" in text and "\n" not in text


def test_the_worker_exits_2_on_an_unsafe_pair_before_acquiring(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "COMMANDER_URL": "http://127.0.0.1:9",  # never contacted
        "RUN_ID": "r",
        "RELAY_ROOT": str(tmp_path),
        "KILL_GRACE_S": "5",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "relay.worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "renew_safety_margin_s" in proc.stderr and "KILL_GRACE_S" in proc.stderr
    assert "Traceback" not in proc.stderr and "unreachable" not in proc.stderr


def test_a_grant_with_a_ttl_too_short_for_this_worker_is_handed_back_untrained(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=1.0)  # renews every 1/3 s: no room for a 1 s margin
    w = WorkerProc(
        tmp_path / "pod", commander_url=cmd.url, run_id="short", worker_id="pod", train={"max_steps": 5}
    ).start()
    assert w.wait(60) == 2, w.output()
    names = [e["event"] for e in w.events()]
    assert names == ["acquired", "preempted"], names  # nothing recovered, nothing trained
    assert "--lease-ttl" in w.events()[-1]["message"]
    with urllib.request.urlopen(f"{cmd.url}/api/runs/short", timeout=5) as resp:
        detail = json.loads(resp.read())
    assert detail["status"] == "preempted" and detail["holder"] is None
    assert "refuses the lease" in detail["detail"] and "RENEW_SAFETY_MARGIN_S" in detail["detail"]
    assert "refuses the lease" in w.output()
