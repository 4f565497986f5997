"""The relay demo, end to end on one machine: commander, remote, two "pods", a real SFT run handed over.

1. A commander subprocess (``relayctl serve``) on a fresh SQLite file in the work directory, a free
   loopback port and a random shared secret; a filesystem remote (``file://``) next to it.
2. A tiny Llama model, tokenizer and SFT data set, built locally (no download).
3. Pod A: a ``relayctl worker`` subprocess with its own volume (``RELAY_ROOT``) trains the run with the
   built-in SFT trainer.  Once it has synced a checkpoint to the remote, the demo preempts it with
   SIGTERM, as a spot reclaim or ``docker stop`` would: the trainer saves the step in flight, the worker
   commits and syncs it and releases the lease as ``preempted``.
4. Pod B: another worker with an EMPTY volume (another machine) starts at that moment, waits while A
   still holds the lease, gets it at epoch 2, pulls A's last checkpoint from the remote, verifies it and
   trains to the end.
5. The closing checks (:mod:`relay.demo.verdict`) compare what the pods' volumes, the commander and the
   remote say; any gap is a non-zero exit with the reason.

Preemption timing: the demo sends the SIGTERM the moment pod A has synced a checkpoint and its progress
shows step ``preempt_at`` or later, while the trainer runs on at full speed: a real preemption at a real
moment.  Whatever step the trainer is on when the signal lands is saved, committed, synced and resumed
by pod B (the closing checks count the steps lost: 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from relay.demo.children import Child, kill_trainer_group, log_tails
from relay.demo.timeline import LeaseView, PodWatcher, Timeline
from relay.demo.verdict import RelayFacts, check_relay, summary_lines
from relay.demo.workdir import finish_workdir, kept_message, prepare_workdir

RUN_ID = "demo-sft"
POD_A = "pod-a"
POD_B = "pod-b"
TICK_S = 0.1
COMMANDER_POLL_S = 0.5
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")

EXIT_OK = 0
EXIT_RELAY_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class DemoOptions:
    steps: int = 200
    save_steps: int = 20
    preempt_at: int = 30
    workdir: Path | None = None
    keep: bool = False
    timeout_s: float = 170.0
    lease_ttl_s: float = 30.0  # only a crash would wait for it; long enough for a loaded 2-core box
    loss_every: int = 25
    deepspeed: Path | None = None  # a DeepSpeed JSON config for both pods' trainers


class DemoFailed(Exception):
    """The relay did not get as far as the closing checks; str() says what was being waited for."""


class Demo:
    def __init__(self, opts: DemoOptions, out: TextIO | None = None) -> None:
        self.opts = opts
        self.tl = Timeline(out)
        self.t0 = self.tl.t0
        self.workdir: Path | None = None
        self.created_workdir = False
        self.commander: Child | None = None
        self.workers: dict[str, Child] = {}
        self.helpers: list[Child] = []
        self.watchers: dict[str, PodWatcher] = {}
        self.exit_seen: dict[str, int] = {}
        self.url = ""
        self.secret = secrets.token_hex(16)
        self.remote_url = ""
        self.lease_view = LeaseView(RUN_ID)
        self._next_commander_poll = 0.0
        self.client: Any = None  # the CommanderClient while _main runs

    # ------------------------------------------------------------------------------------ entry

    def run(self) -> int:
        """Run the demo; always stop every child and (unless kept) remove the work directory."""
        ok = False
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # Ctrl-C stops the demo even when it was started with SIGINT ignored (a background job of a shell)
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            try:
                self._prepare_workdir()
            except OSError as exc:
                print(f"relayctl demo: error: cannot create the work directory: {exc}", file=sys.stderr)
                ok = True
                return EXIT_USAGE
            code = asyncio.run(self._main())
            ok = code == EXIT_OK
            return code
        except DemoFailed as exc:
            self.tl.plain()
            self.tl.plain(f"relay demo: FAILED: {exc}")
            self._print_log_tails()
            return EXIT_RELAY_FAILED
        except KeyboardInterrupt:
            self.tl.plain()
            self.tl.plain("relay demo: interrupted; stopping the workers and the commander")
            ok = True  # nothing to inspect: clean up unless --keep
            return EXIT_INTERRUPTED
        finally:
            self.shutdown()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            self._finish_workdir(keep=self.opts.keep or not ok)

    def _prepare_workdir(self) -> None:
        self.workdir, self.created_workdir = prepare_workdir(self.opts.workdir, (POD_A, POD_B))
        self.remote_url = (self.workdir / "remote").as_uri()

    def _finish_workdir(self, *, keep: bool) -> None:
        if self.workdir is not None:
            if keep:
                self.tl.plain(kept_message(self.workdir, (POD_A, POD_B)))
            finish_workdir(self.workdir, created=self.created_workdir, keep=keep)

    # ---------------------------------------------------------------------------------- children

    def _base_env(self) -> dict[str, str]:
        """The parent's environment without anything that configures relay, plus the demo's settings."""
        from relay.config import env_names

        drop = set(env_names().values()) | {"HF_TOKEN", "HF_REPO", "COMMANDER_URL", "CUDA_VISIBLE_DEVICES"}
        env = {
            k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("RELAY_", "SLIME_"))
        }
        assert self.workdir is not None
        package_root = str(Path(__file__).resolve().parents[2])
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HOME=str(self.workdir / "hf-home"),
            CUDA_VISIBLE_DEVICES="",  # the demo is the CPU path, also on a GPU box
            RELAY_NPROC="1",
        )
        return env

    async def _start_commander(self) -> None:
        assert self.workdir is not None
        env = self._base_env()
        env["RELAY_SHARED_SECRET"] = self.secret
        db = self.workdir / "commander" / "state.db"
        argv = [sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--state", str(db), "--lease-ttl", f"{self.opts.lease_ttl_s:g}"]
        self.commander = Child(
            "commander", argv, env=env, cwd=self.workdir, log_path=self.workdir / "logs" / "commander.log"
        )
        self.commander.start()
        deadline = time.monotonic() + 30.0
        while True:
            found = _LISTENING.search(self.commander.output())
            if found:
                self.url = found.group(1)
                break
            if not self.commander.running():
                raise DemoFailed(f"the commander exited with code {self.commander.poll()} before listening")
            if time.monotonic() > deadline:
                raise DemoFailed("the commander did not start listening within 30s")
            await asyncio.sleep(0.05)
        self.tl.say(
            "commander",
            f"listening on {self.url} (pid {self.commander.pid}; SQLite {db}; lease ttl {self.opts.lease_ttl_s:g}s; "
            "random shared secret)",
        )

    def _start_worker(self, name: str, train: dict[str, Any]) -> Child:
        assert self.workdir is not None
        root = self.workdir / name
        env = self._base_env()
        env.update(
            COMMANDER_URL=self.url,
            RELAY_SHARED_SECRET=self.secret,
            RUN_ID=RUN_ID,
            WORKER_ID=name,
            MODE="sft",
            RELAY_ROOT=str(root),
            RELAY_REMOTE=self.remote_url,
            TRAIN=json.dumps(train),
            REPORT_INTERVAL_S="0.5",
            ACQUIRE_BACKOFF_S="0.2",
            ACQUIRE_BACKOFF_MAX_S="0.5",
            COMMANDER_WAIT_S="20",
            GRACE_S="60",
            KILL_GRACE_S="2",
            HANG_TIMEOUT_S="120",
            STARTUP_TIMEOUT_S="120",
            MAX_RESTARTS="0",  # a crashing trainer fails the demo at once, with its log
            # pod B arrives as pod A is preempted, with an empty volume that pulls the whole checkpoint
            # (the story the verdict checks): no warm standby racing A's final sync onto it
            STANDBY="false",
        )
        child = Child(
            name,
            [sys.executable, "-m", "relay.cli", "worker"],
            env=env,
            cwd=root,
            log_path=self.workdir / "logs" / f"{name}.log",
        )
        empty = not any(root.iterdir())
        child.start()
        self.workers[name] = child
        self.watchers[name] = PodWatcher(
            name, root / "runs" / RUN_ID, loss_every=self.opts.loss_every, worker_log=child.log_path
        )
        self.tl.say(
            name,
            f"worker started (`relayctl worker`, pid {child.pid}); its volume {root} is {'empty' if empty else 'NOT empty'}",
        )
        return child

    async def _assets(self, builder: Child) -> Any:
        from relay.demo.assets import DemoAssets

        deadline = self.t0 + self.opts.timeout_s
        while builder.poll() is None:
            if time.time() > deadline:
                raise DemoFailed(
                    f"timed out after {self.opts.timeout_s:g}s building the tiny model (--timeout)"
                )
            await asyncio.sleep(0.05)
        lines = builder.output().strip().splitlines()
        if builder.poll() != 0 or not lines:
            raise DemoFailed(
                f"building the tiny model failed (exit code {builder.poll()}); see {builder.log_path}"
            )
        try:
            return DemoAssets.from_json(lines[-1])
        except (ValueError, KeyError) as exc:
            raise DemoFailed(
                f"building the tiny model printed no result ({exc}); see {builder.log_path}"
            ) from None

    def shutdown(self) -> None:
        """Stop every child: workers first (they release their leases), their trainers, then the commander."""
        try:
            for child in self.helpers:
                child.stop(grace_s=0.0)
            running = [c for c in self.workers.values() if c.running()]
            for child in running:  # all at once: each gets the same grace, not one after the other
                child.send(signal.SIGTERM)
            deadline = time.monotonic() + 20.0
            for child in running:
                child.stop(grace_s=max(0.0, deadline - time.monotonic()), term=False)
            self._kill_trainers()
            if self.commander is not None:
                self.commander.stop(grace_s=5.0)
        except KeyboardInterrupt:  # a second Ctrl-C: no more grace
            for child in [
                *self.helpers,
                *self.workers.values(),
                *([self.commander] if self.commander else []),
            ]:
                child.stop(grace_s=0.0)
            self._kill_trainers()

    def _print_log_tails(self) -> None:
        if self.workdir is not None:
            for line in log_tails(self.workdir, RUN_ID, (POD_A, POD_B)):
                self.tl.plain(line)

    def _kill_trainers(self) -> None:
        for watcher in self.watchers.values():
            for pid in watcher.facts.trainer_pids:
                kill_trainer_group(pid)

    # -------------------------------------------------------------------------------- main flow

    async def _main(self) -> int:
        from relay.client import CommanderClient
        from relay.demo.assets import train_block

        opts = self.opts
        assert self.workdir is not None
        self._announce()
        builder = Child(
            "assets",
            [sys.executable, "-m", "relay.demo.assets", str(self.workdir / "assets")],
            env=self._base_env(),
            cwd=self.workdir,
            log_path=self.workdir / "logs" / "assets.log",
        )
        self.helpers.append(builder.start())
        await self._start_commander()
        self.tl.say("remote", f"filesystem remote {self.remote_url}")
        assets = await self._assets(builder)
        self.tl.say(
            "assets",
            f"tiny Llama ({assets.parameters / 1e3:.0f}k parameters) + BPE tokenizer and {assets.rows} chat SFT rows, "
            f"built locally in {self.workdir / 'assets'}",
        )
        train = train_block(assets, steps=opts.steps, save_steps=opts.save_steps, deepspeed=opts.deepspeed)
        async with CommanderClient(self.url, self.secret) as client:
            self.client = client
            await client.health()
            pod_a = self._start_worker(POD_A, train)
            a = self.watchers[POD_A].facts

            def a_ready() -> bool:
                return bool(a.synced) and (a.last_step or 0) >= opts.preempt_at

            await self._until(
                a_ready, f"pod-a to sync a checkpoint and reach step {opts.preempt_at}", must_run=[pod_a]
            )
            self.tl.say(
                "demo",
                f">>> preempting pod-a at step {a.last_step}: SIGTERM to its worker (a spot reclaim / docker stop)",
            )
            pod_a.send(signal.SIGTERM)
            self._start_worker(POD_B, train)
            await self._until(
                lambda: not any(w.running() for w in self.workers.values()), "both workers to exit"
            )
            await self._tick(force_commander=True)
            facts = await self._facts(client)
        return self._verdict(facts)

    def _announce(self) -> None:
        opts = self.opts
        self.tl.plain(
            f"relay demo: one SFT run ({opts.steps} steps, checkpoint every {opts.save_steps}) carried by two "
            f"pods; pod-a is preempted at step {opts.preempt_at}"
            + (f"; DeepSpeed config {opts.deepspeed}" if opts.deepspeed else "")
        )
        self.tl.plain(
            f"relay demo: work directory {self.workdir}"
            + ("" if opts.keep else " (removed at the end; --keep to inspect)")
        )

    def _verdict(self, facts: RelayFacts) -> int:
        """The summary, then OK (exit 0) or every problem found and the logs' last lines."""
        problems = check_relay(facts)
        self.tl.plain()
        self.tl.plain("Summary")
        for line in summary_lines(facts, self.remote_url):
            self.tl.plain(line)
        self.tl.plain()
        if problems:
            self.tl.plain("relay demo: FAILED: the relay did not work as it should:")
            for p in problems:
                self.tl.plain(f"  - {p}")
            self._print_log_tails()
            return EXIT_RELAY_FAILED
        self.tl.plain(
            f"relay demo: OK: pod-a was preempted at step {facts.a.last_step}, pod-b resumed from its checkpoint "
            f"at epoch 2 and finished the run at step {facts.steps}; no step lost."
        )
        return EXIT_OK

    async def _until(self, cond: Any, what: str, *, must_run: list[Child] = ()) -> None:  # type: ignore[assignment]
        deadline = self.t0 + self.opts.timeout_s
        while True:
            await self._tick()
            if cond():
                return
            for child in must_run:
                if not child.running():
                    raise DemoFailed(f"{child.name}'s worker exited with code {child.poll()} before {what}")
            if self.commander is not None and not self.commander.running():
                raise DemoFailed(
                    f"the commander exited with code {self.commander.poll()} while waiting for {what}"
                )
            if time.time() > deadline:
                raise DemoFailed(f"timed out after {self.opts.timeout_s:g}s waiting for {what} (--timeout)")
            await asyncio.sleep(TICK_S)

    async def _tick(self, *, force_commander: bool = False) -> None:
        """One round: the commander's view of the lease, new records from each pod, exited workers."""
        lines: list[tuple[float, str, str]] = []
        now = time.monotonic()
        if force_commander or now >= self._next_commander_poll:
            self._next_commander_poll = now + COMMANDER_POLL_S
            lines += await self.lease_view.poll(self.client)
        for name, watcher in self.watchers.items():
            lines += [(ts, name, text) for ts, text in watcher.poll()]
        for name, child in self.workers.items():
            code = child.poll()
            if code is not None and name not in self.exit_seen:
                self.exit_seen[name] = code
                self.watchers[name].facts.exit_code = code
                lines += [(ts, name, text) for ts, text in self.watchers[name].poll()]
                lines.append((time.time(), name, f"worker exited with code {code}"))
        for ts, who, text in sorted(lines, key=lambda x: x[0]):
            self.tl.say(who, text, ts)

    async def _facts(self, client: Any) -> RelayFacts:
        from relay.remote import open_remote

        commander = await self.lease_view.record(client)
        remote_step = remote_epoch = None
        with contextlib.suppress(Exception):
            state = await asyncio.to_thread(open_remote(self.remote_url, RUN_ID).state)
            if state is not None:
                remote_step, remote_epoch = state.step, state.epoch
        return RelayFacts(
            run_id=RUN_ID,
            steps=self.opts.steps,
            a=self.watchers[POD_A].facts,
            b=self.watchers[POD_B].facts,
            commander=commander,
            remote_step=remote_step,
            remote_epoch=remote_epoch,
            wall_s=time.time() - self.t0,
        )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
