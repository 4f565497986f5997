"""`relayctl submit` and `relayctl logs` against a real commander subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from relay.cli import main
from relay.client import CommanderClient
from relay.schema import AcquireRequest, LogLine, ReleaseRequest, ReportRequest
from relay_testkit.commander_proc import REPO_ROOT, CommanderProcess
from tests.commander.calls import SECRET

SPEC_YAML = """\
run_id: cli-1
mode: sft
priority: 7
max_restarts: 1
max_duration_s: 3600
train:
  model: sshleifer/tiny-gpt2
  dataset: data/train.jsonl
  learning_rate: 0.0001
  lora: {r: 8, lora_alpha: 16}
callbacks:
  webhook_url: https://hooks.example.com/relay
  auth_header: "Bearer do-not-print-me"
  events: [completed, failed]
"""


@pytest.fixture(scope="module")
def commander(tmp_path_factory):
    # callbacks go to a made-up host: keep them queued, never send them (no network in tests)
    env = {**os.environ, "RELAY_CALLBACK_DELIVER": "0"}
    proc = CommanderProcess(tmp_path_factory.mktemp("jobs-cli") / "state.db", secret=SECRET, env=env).start()
    yield proc
    proc.close()


@pytest.fixture(autouse=True)
def env(commander, monkeypatch):
    monkeypatch.setenv("COMMANDER_URL", commander.url)
    monkeypatch.setenv("RELAY_SHARED_SECRET", SECRET)


def relayctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_a_yaml_spec_then_again_then_a_conflict(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(SPEC_YAML)
    code, out, err = relayctl(capsys, "submit", str(path))
    assert (code, err) == (0, "") and out.strip() == "submitted run cli-1 (pending, mode sft, priority 7)"
    code, out, _ = relayctl(capsys, "submit", str(path))
    assert code == 0 and out.strip() == "run cli-1 was already submitted with this spec; it is pending"
    code, out, err = relayctl(capsys, "submit", str(path), "--priority", "8")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(
        "relayctl submit: error: run cli-1 was submitted with a different spec (differs in: priority)"
    )
    code, out, _ = relayctl(capsys, "submit", str(path), "--run-id", "cli-2", "--json")
    data = json.loads(out)
    assert code == 0 and data["created"] and data["run"]["run_id"] == "cli-2"
    assert data["run"]["spec"]["train"]["lora"] == {"r": 8, "lora_alpha": 16}
    assert data["run"]["spec"]["callbacks"]["auth_header"] == "***"
    assert "do-not-print-me" not in out
    code, out, _ = relayctl(capsys, "status", "cli-2")
    assert code == 0 and "restarts     0 of 1" in out and "callbacks    https://hooks.example.com" in out
    assert "do-not-print-me" not in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run_id: [unclosed\n", ": invalid YAML: line 2, column 1: "),
        ("run_id: x\nstarted: 2024-13-45\n", ": invalid YAML: bad value: month must be in 1..12"),
        ("[" * 5000, ": invalid YAML: "),
        ("- just\n- a list\n", "must hold a mapping of spec keys"),
        ("run_id: ok\nlearning_rate: 1\n", "learning_rate: unknown key (keys: run_id, mode,"),
        ("run_id: ../x\n", "run_id: invalid id: "),
        (
            "callbacks:\n  webhook_url: ftp://x/y\n  auth_header: Bearer hide-me\n",
            "callbacks.webhook_url: must be an http",
        ),
        (
            'callbacks:\n  webhook_url: http://x/y\n  auth_header: "a\\nhide-me"\n',
            "callbacks.auth_header: must be one line",
        ),
        ("train:\n  learning_rte: 0.1\n", "train.learning_rte: unknown key (did you mean 'learning_rate'?)"),
        ("train:\n  model: m\n  dataset: d\n  lora: {r: 8, alpha: 16}\n", "train.lora.alpha: unknown key"),
        ("mode: rl\ntrain:\n  max_steps: 5\n  output_dir: /x\n", "train.output_dir: not configurable here"),
        ("train:\n  model: m\n  dataset: d\n  step_seconds: 0.1\n", "train.step_seconds: unknown key"),
        ("train:\n  max_steps: many\n", "train.max_steps: "),
        ("train:\n  lr: .nan\n", "train: non-finite number at train.lr"),
    ],
)
def test_bad_spec_files_are_one_line_without_sending_anything(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = relayctl(capsys, "submit", str(path))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"relayctl submit: error: {path}") and message in err, err
    assert "hide-me" not in err and "Traceback" not in err


def test_every_problem_in_a_spec_file_is_listed_one_per_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("run_id: ../x\npriority: high\nmode: nope\ncolour: red\n")
    code, out, err = relayctl(capsys, "submit", str(path))
    lines = err.splitlines()
    assert code == 2 and out == "" and lines[0] == f"relayctl submit: error: {path}: 4 problems:", err
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  - run_id",
        "  - mode",
        "  - priority",
        "  - colour",
    ]
    path.write_text("train:\n  learning_rte: 1\n  save_stepz: 2\n")
    code, out, err = relayctl(capsys, "submit", str(path))
    lines = err.splitlines()
    assert code == 2 and lines[0].endswith("2 problems:"), err
    assert lines[1].startswith("  - train.learning_rte: unknown key (did you mean 'learning_rate'?)")
    assert lines[2].startswith("  - train.save_stepz: unknown key (did you mean 'save_steps'?)")
    assert lines[3] == "(a trainer of your own, which takes any train: keys: --no-validate)"
    path.write_text(
        "train:\n  model: m\n  max_steps: many\n  lora: {r: 0}\n"
    )  # the built-in trainer's own checks
    code, out, err = relayctl(capsys, "submit", str(path))
    assert code == 2 and "3 problems" in err and "train.dataset: required" in err, err
    assert "train.max_steps:" in err and "train.lora.r:" in err


@pytest.mark.parametrize(
    ("mode", "train"),
    [
        ("sft", {}),
        (
            "sft",
            {"max_steps": 4, "save_steps": 2, "step_seconds": 0.05, "crash_at_step": 3},
        ),  # the mock's keys
        ("rl", {"max_steps": 4, "hang_at_step": 2, "ignore_sigterm": True}),
        ("sft", {"model": "m", "dataset": "d.jsonl", "learning_rate": 1e-4, "lora": {"r": 4}}),
        ("rl", {"model": "m", "dataset": "d.jsonl", "num_generations": 4, "beta": 0.0}),
    ],
)
def test_train_blocks_the_builtin_or_the_mock_trainer_accepts_pass(tmp_path, mode, train):
    from relay.ctl.submit import load_spec

    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"run_id": "ok", "mode": mode, "train": train}))
    assert load_spec(str(path)).train == train


def test_no_validate_sends_a_block_for_your_own_trainer(tmp_path, capsys):
    path = tmp_path / "own.yaml"
    path.write_text("run_id: own-trainer\ntrain:\n  slime_args: --tp 2\n  learning_rte: 1\n")
    code, out, err = relayctl(capsys, "submit", str(path))
    assert code == 2 and out == "" and "train.slime_args: unknown key" in err and "--no-validate" in err
    code, out, err = relayctl(capsys, "submit", str(path), "--no-validate")
    assert (code, err) == (0, "") and "submitted run own-trainer" in out


def test_the_example_job_spec_is_valid():
    from relay.ctl.submit import load_spec

    spec = load_spec(str(REPO_ROOT / "configs" / "job.yaml"))
    assert spec.run_id == "sft-demo-001" and spec.train["max_steps"] == 2000
    # the placeholder webhook is commented out: submitting the example must not queue callbacks that the
    # commander would retry for hours against studio.example.com
    assert spec.callbacks is None
    assert "# callbacks:" in (REPO_ROOT / "configs" / "job.yaml").read_text()


def test_missing_spec_file(tmp_path, capsys):
    code, _, err = relayctl(capsys, "submit", str(tmp_path / "nope.yaml"))
    assert (
        code == 2
        and err.strip()
        == f"relayctl submit: error: cannot read {tmp_path / 'nope.yaml'}: No such file or directory"
    )


def test_submit_from_stdin_without_traceback_on_a_closed_commander(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDER_URL", "RELAY_SHARED_SECRET")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "submit", "-", "--commander-url", "http://127.0.0.1:9"],
        input="run_id: stdin-1\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1 and "unreachable" in result.stderr and "Traceback" not in result.stderr


async def seed_logged_run(url: str, run_id: str) -> tuple[CommanderClient, object]:
    client = CommanderClient(url, SECRET)
    grant = await client.acquire(AcquireRequest(run_id=run_id, worker_id="pod-1"))
    lines = [LogLine(ts=1_700_000_000.0 + i, stream="stdout", line=f"step {i}") for i in range(3)]
    lines.append(LogLine(ts=1_700_000_003.5, stream="stderr", line="warning: slow disk"))
    await client.report(
        run_id,
        ReportRequest(worker_id="pod-1", lease_id=grant.lease_id, epoch=grant.epoch, step=3, log_tail=lines),
    )
    return client, grant


def test_logs_prints_the_timeline_and_a_tail(commander, capsys):
    async def seed() -> None:
        client, _ = await seed_logged_run(commander.url, "logged")
        await client.close()

    asyncio.run(seed())
    code, out, err = relayctl(capsys, "logs", "logged")
    lines = out.splitlines()
    assert code == 0 and err == "" and len(lines) == 4
    # each line names the pod and the lease epoch that printed it
    assert lines[0].endswith(" pod-1/e1 stdout step 0") and lines[3].endswith(
        " pod-1/e1 stderr warning: slow disk"
    )
    assert ".500 pod-1/e1" in lines[3]  # milliseconds of the timestamp
    code, out, _ = relayctl(capsys, "logs", "logged", "--tail", "1", "--json")
    assert code == 0 and [json.loads(x) for x in out.splitlines()] == [
        {
            "ts": 1_700_000_003.5,
            "stream": "stderr",
            "line": "warning: slow disk",
            "worker_id": "pod-1",
            "epoch": 1,
        }
    ]
    code, _, err = relayctl(capsys, "logs", "missing")
    assert code == 1 and err.strip() == "relayctl logs: error: no run missing"


def test_logs_follow_prints_new_lines_and_exits_when_the_run_ends(commander):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    async def scenario() -> tuple[int, str, str]:
        client, grant = await seed_logged_run(commander.url, "followed")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.cli",
            "logs",
            "followed",
            "-f",
            "--interval",
            "0.1",
            env=env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        first = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(4)]
        assert first[0].decode().endswith("step 0\n")
        await client.report(
            "followed",
            ReportRequest(
                worker_id="pod-1",
                lease_id=grant.lease_id,
                epoch=grant.epoch,
                step=4,
                log_tail=[LogLine(ts=time.time(), stream="stdout", line="the last line")],
            ),
        )
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().endswith("the last line\n")
        assert proc.returncode is None  # still following a running run
        await client.release(
            ReleaseRequest(
                run_id="followed",
                worker_id="pod-1",
                lease_id=grant.lease_id,
                epoch=grant.epoch,
                outcome="completed",
            )
        )
        await client.close()
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = asyncio.run(scenario())
    assert code == 0 and out == "" and err.strip() == "relayctl logs: run followed is completed"
