"""A Megatron-style trainer under the relay, end to end on the storage side.

relay_testkit/fake_megatron.py writes exactly Megatron's checkpoint layout and log format (Megatron
itself needs CUDA).  Started through the relay's launcher with RELAY_TRAINER_CMD mapped to Megatron's own
flags (configs/slime_sft.sh does the same for slime): its saves are committed as they appear, a SIGTERM
goes through ``--exit-signal-handler`` and loses 0 steps, the checkpoint travels through a file:// remote
to another volume, and ``--load $RELAY_RESUME_FROM`` goes on from it to the same final weights as a run
never stopped.  The step comes from its log lines (relay.worker.log_progress).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from relay.ckpt import RunLayout, commit_newest_staged, verify_checkpoint
from relay.ckpt.megatron import TRACKER_NAME
from relay.remote import open_remote
from relay.worker.log_progress import parse_log_line
from relay_testkit.wait import wait_for
from tests.trainer.conftest import LAUNCHERS, log_text, stop_group

ITERS = 12
CMD = (
    f'exec {sys.executable} -m relay_testkit.fake_megatron --save "$RELAY_OUTPUT_DIR" '
    f'--load "$RELAY_RESUME_FROM" --train-iters {ITERS} --save-interval 4 --log-interval 1 '
    "--exit-signal-handler --seconds-per-iteration 0.15"
)


def launch(layout: RunLayout, *, epoch: int, resume: Path | None, log: Path) -> subprocess.Popen[bytes]:
    layout.ensure()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "SLIME_"))}
    env.update(
        RELAY_TRAINER_CMD=CMD,
        RELAY_RUN_ID=layout.run_id,
        RELAY_EPOCH=str(epoch),
        RELAY_OUTPUT_DIR=str(layout.staging_dir),
        RELAY_RESUME_FROM=str(resume or ""),
        RELAY_PROGRESS_FILE=str(layout.progress_file),
        PYTHONPATH=str(LAUNCHERS.parent),
    )
    out = open(log, "wb")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            ["bash", str(LAUNCHERS / "launch_sft.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def logged_steps(log: Path) -> list[int]:
    steps = []
    for line in log_text(log).splitlines():
        got = parse_log_line(line)
        if got is not None and got.step is not None:
            steps.append(got.step)
    return steps


def final_weights(layout: RunLayout, step: int) -> list[float]:
    ckpt = layout.step_dir(step)
    iteration = int((ckpt / TRACKER_NAME).read_text())
    return json.loads((ckpt / f"iter_{iteration:07d}" / "mp_rank_00" / "model_optim_rng.pt").read_text())[
        "weights"
    ]


def test_megatron_layout_committed_preempted_resumed_exactly(tmp_path: Path) -> None:
    remote = open_remote((tmp_path / "remote").as_uri(), "meg")
    ref, pod_a, pod_b = (RunLayout(tmp_path / n, "meg") for n in ("ref", "pod-a", "pod-b"))
    ref_proc = launch(ref, epoch=1, resume=None, log=tmp_path / "ref.log")
    a = launch(pod_a, epoch=1, resume=None, log=tmp_path / "a.log")
    try:
        # pod A: its saves are committed and pushed as they appear, like the worker's poll loop does
        def a_progress() -> bool:
            ckpt = commit_newest_staged(pod_a, epoch=1, keep_last_n=3)
            if ckpt is not None:
                remote.push(ckpt, epoch=1)
            return bool(logged_steps(tmp_path / "a.log")) and max(logged_steps(tmp_path / "a.log")) >= 6

        wait_for(a_progress, 60, "pod-a to log iteration 6", a)
        os.killpg(a.pid, signal.SIGTERM)  # a preemption: Megatron's --exit-signal-handler saves and exits 0
        assert a.wait(timeout=30) == 0, log_text(tmp_path / "a.log")
        assert ref_proc.wait(timeout=60) == 0, log_text(tmp_path / "ref.log")
    finally:
        stop_group(a)
        stop_group(ref_proc)
    a_log = log_text(tmp_path / "a.log")
    assert "exiting program after receiving SIGTERM." in a_log
    last = max(logged_steps(tmp_path / "a.log"))
    stopped = commit_newest_staged(pod_a, epoch=1, keep_last_n=3)
    assert stopped is not None and stopped.step == last  # the iteration in flight was saved: 0 steps lost
    remote.push(stopped, epoch=1)
    assert (stopped.path / TRACKER_NAME).read_text() == str(last)
    assert verify_checkpoint(stopped.path, expected_run_id="meg").ok

    # pod B: another volume, the checkpoint pulled from the remote and passed to --load as it is
    pulled = remote.pull_newest(pod_b)
    assert pulled is not None and pulled.step == last
    b = launch(pod_b, epoch=2, resume=pulled.path, log=tmp_path / "b.log")
    committed: list[int] = []
    try:

        def b_commit() -> bool:
            done = b.poll() is not None  # then one more commit takes the last save
            ckpt = commit_newest_staged(pod_b, epoch=2, keep_last_n=3)
            if ckpt is not None:
                committed.append(ckpt.step)
            return done

        wait_for(b_commit, 60, "pod-b to finish", None)
        assert b.returncode == 0, log_text(tmp_path / "b.log")
    finally:
        stop_group(b)
    assert committed and committed[-1] == ITERS and all(s > last for s in committed), committed
    assert f"loaded checkpoint from {pulled.path} at iteration {last}" in log_text(tmp_path / "b.log")
    assert logged_steps(tmp_path / "b.log") == list(range(last + 1, ITERS + 1))
    ref_final = commit_newest_staged(ref, epoch=1, keep_last_n=3)
    assert ref_final is not None and ref_final.step == ITERS
    assert final_weights(pod_b, ITERS) == final_weights(ref, ITERS)  # exact: the same floats
