"""Third-party trainers run as a user would, with and without the relay: shared by tests and bench.

The trainer environments (LLaMA-Factory, TRL's CLI) are built by ``tools/trainer_envs.sh`` into
``.cache/envs/<name>`` (``tools/test.sh`` runs it first).  ``relay_experiment`` runs one command three
times: bare and uninterrupted (A, what the user would get without the relay), under the relay with a real
SIGTERM at a chosen step (B), and under the relay resumed from B's checkpoint moved to another directory
(C), as a worker on another pod would present it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay_testkit.trainer_env import injected_env, pause_at_step_env
from relay_testkit.wait import wait_for

REPO = Path(__file__).resolve().parents[1]
ENVS = Path(os.environ.get("RELAY_TRAINER_ENVS", REPO / ".cache" / "envs"))


def trainer_env_bin(name: str) -> Path:
    """``.cache/envs/<name>/bin``; a missing environment is an error saying how to build it."""
    env = ENVS / name
    if not (env / ".relay-env-installed").is_file():
        raise RuntimeError(
            f"trainer environment {env} is not built: run `bash tools/trainer_envs.sh {name}` "
            "(tools/test.sh does it before the tests)"
        )
    return env / "bin"


def base_env() -> dict[str, str]:
    """The test process's environment without any RELAY_* variable: a bare run, 1 thread, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "SLIME_"))}
    env.pop("PYTHONPATH", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        DISABLE_VERSION_CHECK="1",
    )
    return env


def relay_env(run_dir: Path, *, epoch: int = 1, resume_from: Path | None = None) -> dict[str, str]:
    """What a worker gives a third-party trainer: the RELAY_* contract and the injection on PYTHONPATH."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = base_env()
    env.update(
        RELAY_RUN_ID="run-test",
        RELAY_MODE="sft",
        RELAY_EPOCH=str(epoch),
        RELAY_OUTPUT_DIR=str(run_dir / "staging"),
        RELAY_RESUME_FROM=str(resume_from) if resume_from else "",
        RELAY_PROGRESS_FILE=str(run_dir / "progress.jsonl"),
        RELAY_FINAL_DIR=str(run_dir / "final"),
    )
    (run_dir / "staging").mkdir(parents=True, exist_ok=True)
    return injected_env(env)


def start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (as the worker does), output to ``log``."""
    cwd.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Progress lines of trained steps (heartbeats left out)."""
    from trainer_blackbox.progress import read_progress

    return read_progress(path)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-n:] if path.exists() else ""


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@dataclass(frozen=True)
class Recipe:
    """One third-party trainer as a user runs it: the same command in every working directory (its own
    output directory is relative: ``user_out``), where its final weights land, what a checkpoint holds."""

    name: str
    command: list[str]
    weights: str  # the final weights file, compared between runs
    final_subdir: str = ""  # where the bare run's export lands inside user_out

    def bare_final(self, cwd: Path) -> Path:
        return cwd / "user_out" / self.final_subdir if self.final_subdir else cwd / "user_out"

    def shell(self) -> str:
        """The command as RELAY_TRAINER_CMD holds it."""
        import shlex

        return "exec " + shlex.join(self.command)


@dataclass
class Experiment:
    """What the three runs left behind."""

    root: Path
    bare_final: Path
    committed: Path
    b_lines: list[dict[str, Any]] = field(default_factory=list)
    c_lines: list[dict[str, Any]] = field(default_factory=list)
    bare_wall_s: float = 0.0
    relayed_wall_s: float = 0.0  # B + C

    @property
    def relay_final(self) -> Path:
        return self.root / "c" / "final"


def relay_experiment(root: Path, recipe: Recipe, *, stop_at: int, timeout_s: float = 240.0) -> Experiment:
    """Run the recipe bare (A) and relayed with SIGTERM after step ``stop_at`` (B) side by side, then
    relayed again resumed from B's committed checkpoint (C).  Every run must exit 0."""
    a_dir, b_dir, c_dir = root / "a", root / "b", root / "c"
    t0 = time.monotonic()
    a = start(recipe.command, base_env(), a_dir, root / "a.log")
    b_env = pause_at_step_env(relay_env(b_dir), stop_at)
    b = start(recipe.command, b_env, b_dir, root / "b.log")
    try:
        wait_for(
            lambda: any(x["step"] >= stop_at for x in read_lines(b_dir / "progress.jsonl")),
            timeout_s,
            f"relayed run to reach step {stop_at}",
            b,
        )
        os.killpg(b.pid, signal.SIGTERM)  # the worker signals the trainer's whole process group
        assert b.wait(timeout=120) == 0, tail(root / "b.log")
        b_wall = time.monotonic() - t0
        assert a.wait(timeout=timeout_s) == 0, tail(root / "a.log")
        a_wall = time.monotonic() - t0
    finally:
        kill_group(a)
        kill_group(b)
    staged = b_dir / "staging" / f"step_{stop_at:08d}"
    assert json.loads((staged / "COMPLETE").read_text())["step"] == stop_at, tail(root / "b.log")
    committed = root / "committed" / staged.name  # the worker moves it out; a new pod pulls it elsewhere
    committed.parent.mkdir(parents=True)
    shutil.move(staged, committed)
    (committed / "manifest.json").write_text("{}")
    t1 = time.monotonic()
    c = start(recipe.command, relay_env(c_dir, epoch=2, resume_from=committed), c_dir, root / "c.log")
    try:
        assert c.wait(timeout=timeout_s) == 0, tail(root / "c.log")
    finally:
        kill_group(c)
    return Experiment(
        root=root,
        bare_final=recipe.bare_final(a_dir),
        committed=committed,
        b_lines=read_lines(b_dir / "progress.jsonl"),
        c_lines=read_lines(c_dir / "progress.jsonl"),
        bare_wall_s=a_wall,
        relayed_wall_s=b_wall + (time.monotonic() - t1),
    )


def max_weight_diff(a: Path, b: Path) -> float:
    """The largest absolute difference between two safetensors files' tensors (same names required)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb), (sorted(ta), sorted(tb))
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def checkpoints_under(path: Path) -> list[str]:
    """Checkpoint-looking directories anywhere under ``path`` (the user's own output dir must have none)."""
    if not path.exists():
        return []
    return sorted(
        str(p) for p in path.rglob("*") if p.is_dir() and p.name.startswith(("checkpoint-", "step_"))
    )
