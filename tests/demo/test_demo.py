"""``relayctl demo`` end to end: it must exit 0, tell the story, and leave the facts it claims on disk.

One real demo run (module-scoped, ~30-60 s on 2 cores) feeds several tests, each checking one claim
against the files rather than against the demo's own words: the remote holds the final checkpoint at
epoch 2, pod-b's first step follows pod-a's last synced step, no process is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from relay_testkit.once import once_per_session

REPO = Path(__file__).resolve().parents[2]
RUN = "demo-sft"
PREEMPT_AT = 30  # pod-a is preempted once its progress shows this step or later: a real moment


def relayctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay.cli", *args]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; progress heartbeats (alive, no new step) are left out."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r.get("heartbeat") is not True]


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose environment or command line contains ``text`` (our children carry the workdir)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in blob and state != "Z":
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.fixture(scope="module", params=[None, "configs/deepspeed/zero2.json"], ids=["plain", "zero2"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default demo (200 steps), and the same relay with both pods' trainers under DeepSpeed ZeRO-2
    (CPU here), shortened to 60 steps: the relay is the same, ZeRO's steps are the slow part."""
    config = request.param
    steps = 60 if config else 200

    def run(root: Path) -> dict[str, Any]:
        workdir = root / "wd"
        started = time.monotonic()
        extra = ["--deepspeed", config, "--steps", str(steps)] if config else []
        proc = subprocess.run(
            relayctl("demo", "--keep", "--workdir", str(workdir), *extra),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=170,
        )
        return {
            "rc": proc.returncode,
            "out": proc.stdout,
            "err": proc.stderr,
            "workdir": str(workdir),
            "wall_s": time.monotonic() - started,
            "deepspeed": config,
            "steps": steps,
        }

    result = once_per_session(tmp_path_factory, "demo-zero2" if config else "demo-plain", run)
    return {**result, "workdir": Path(result["workdir"])}


def test_demo_exits_0_and_tells_the_relay(demo: dict[str, Any]) -> None:
    out, steps = demo["out"], demo["steps"]
    assert demo["rc"] == 0, f"demo failed (rc {demo['rc']}):\n{out}\n{demo['err']}"
    expected = [
        r"commander listening on http://127\.0\.0\.1:\d+",
        r"pod-a +worker started .* is empty",
        r"pod-a +acquired the lease on run demo-sft at epoch 1",
        r"pod-a +no checkpoint on its volume or on the remote: cold start",
        r"pod-a +step +1 +loss \d",
        # the first checkpoint pod-a synced: step 20, or a later one when a loaded machine let the trainer
        # save several before the worker looked (the worker commits the newest)
        r"pod-a +checkpoint step \d+ synced to the remote at epoch 1",
        r">>> preempting pod-a at step (?P<seen>\d+): SIGTERM",
        r"pod-b +worker started .* is empty",
        r"pod-a +released the lease as preempted: SIGTERM at step (?P<stop>\d+), checkpoint (?P=stop)\b",
        r"pod-b +acquired the lease on run demo-sft at epoch 2",
        r"pod-b +pulled checkpoint step {stop} from the remote .* resuming at step {stop}",
        r"pod-b +step +{next} +loss \d.*first step of this trainer",
        rf"pod-b +checkpoint step {steps} synced to the remote at epoch 2",
        r"pod-b +released the lease as completed",
        r"commander run demo-sft is completed",
        r"steps lost at preemption: 0",
        r"relay demo: OK",
    ]
    pos = 0
    seen: dict[str, str] = {}
    for template in expected:  # in this order
        pattern = template.format(**seen) if "{" in template and "(?P" not in template else template
        m = re.compile(pattern).search(out, pos)
        assert m, f"missing (in order) {pattern!r} after offset {pos} in:\n{out}"
        seen.update(m.groupdict())
        if "stop" in m.groupdict():
            seen["next"] = str(int(m.group("stop")) + 1)
            # the checkpoint saved on SIGTERM is the step the trainer was on when it landed: at or past
            # the step the demo saw, never an earlier one (that would be lost steps)
            assert int(m.group("stop")) >= int(seen["seen"]) >= PREEMPT_AT, out
            assert re.search(
                rf"pod-a +checkpoint step {m.group('stop')} synced to the remote at epoch 1", out
            )
        pos = m.end()
    assert "Traceback" not in out + demo["err"]
    loss = re.search(rf"loss: ([\d.]+) at step 1 -> ([\d.]+) at step {steps}", out)
    assert loss and float(loss.group(2)) < float(loss.group(1)), out
    print(f"demo wall time {demo['wall_s']:.1f}s")


def test_remote_holds_the_final_checkpoint_at_epoch_2(demo: dict[str, Any]) -> None:
    steps = demo["steps"]
    remote = demo["workdir"] / "remote" / RUN
    state = json.loads((remote / "relay" / "state.json").read_text())
    assert (state["step"], state["epoch"]) == (steps, 2), state
    final = remote / "checkpoints" / f"step_{steps:08d}"
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["step"] == steps
    assert (final / "trainer_state.json").is_file() or any(final.rglob("trainer_state.json"))
    if demo["deepspeed"]:  # DeepSpeed's own layout travelled whole: its loader resumes from it
        assert (final / "latest").read_text().strip() == f"global_step{steps}"
        assert sorted(p.name for p in (final / f"global_step{steps}").iterdir()) == [
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        ]
        assert {f["path"] for f in manifest["files"]} >= {
            "latest",
            f"global_step{steps}/mp_rank_00_model_states.pt",
        }
    else:
        assert (final / "optimizer.pt").is_file() and not (final / "latest").exists()


def test_pod_b_resumed_from_pod_a_last_synced_step(demo: dict[str, Any]) -> None:
    wd, steps = demo["workdir"], demo["steps"]
    a_events = read_jsonl(wd / "pod-a" / "runs" / RUN / "events.jsonl")
    b_events = read_jsonl(wd / "pod-b" / "runs" / RUN / "events.jsonl")
    a_progress = read_jsonl(wd / "pod-a" / "runs" / RUN / "progress.jsonl")
    b_progress = read_jsonl(wd / "pod-b" / "runs" / RUN / "progress.jsonl")

    assert [e["epoch"] for e in a_events if e["event"] == "acquired"] == [1]
    assert [e["epoch"] for e in b_events if e["event"] == "acquired"] == [2]
    a_synced = [e["step"] for e in a_events if e["event"] == "checkpoint_synced"]
    assert a_synced and a_synced[-1] == max(p["step"] for p in a_progress) >= PREEMPT_AT  # 0 steps lost
    resumed = [e for e in b_events if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["source"] == "remote" and resumed[0]["step"] == a_synced[-1]
    assert b_progress[0]["step"] == a_synced[-1] + 1
    assert b_progress[-1]["step"] == steps
    assert {p["epoch"] for p in a_progress} == {1} and {p["epoch"] for p in b_progress} == {2}
    assert a_events[-1]["event"] == "preempted" and b_events[-1]["event"] == "completed"
    # B's volume got A's checkpoint only through the remote: nothing of A's earlier checkpoints
    assert not (wd / "pod-b" / "runs" / RUN / "ckpt" / "step_00000020").exists()


def test_no_process_is_left_behind(demo: dict[str, Any]) -> None:
    assert processes_mentioning(str(demo["workdir"])) == []


def test_ctrl_c_stops_every_child_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    log = tmp_path / "demo.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            relayctl("demo", "--workdir", str(workdir)), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while "trainer started" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert rc == 130, text
    assert "relay demo: interrupted" in text and "Traceback" not in text
    assert processes_mentioning(str(workdir)) == []
    assert not workdir.exists(), "the work directory should be removed without --keep"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "3"], "--steps must be at least 4"),
        (["--save-steps", "199"], "--save-steps must be between 1 and --steps - 2"),
        (["--preempt-at", "20"], "--preempt-at must lie after the first checkpoint (step 20)"),
        (["--preempt-at", "200"], "--preempt-at must lie after the first checkpoint"),
        (["--timeout", "0"], "--timeout must be a positive number"),
        (
            ["--deepspeed", "configs/deepspeed/nope.json"],
            "--deepspeed configs/deepspeed/nope.json: no such file",
        ),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    proc = subprocess.run(relayctl("demo", *args), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_non_empty_workdir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    proc = subprocess.run(
        relayctl("demo", "--workdir", str(tmp_path)), cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert (tmp_path / "something").read_text() == "x"
