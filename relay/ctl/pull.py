"""``relayctl pull RUN [--step N | --final] DEST``: download a run's final model or a checkpoint, verified.

From the run's remote (``--remote URL`` / RELAY_REMOTE, or ``--hf-repo owner/name`` / HF_REPO with
HF_TOKEN), the run's final export (``--final``: what the trainer saved at the end, published when the run
completed), checkpoint ``--step N``, or, by default, the newest checkpoint.  Every file is checked against
the remote manifest (size and sha256) before DEST appears; a copy that does not match is refused (exit 1)
and nothing is left at DEST.  A progress bar shows on a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "relayctl pull"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run")
    parser.add_argument("dest", type=Path, help="directory to create (must not exist, or be empty)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--final", action="store_true", help="the run's final export (model or adapter, tokenizer, config)"
    )
    which.add_argument(
        "--step", type=int, default=None, help="the checkpoint of this step (default: the newest)"
    )
    parser.add_argument(
        "--remote", default=None, help="the run's remote, file:///... or hf://owner/repo (env RELAY_REMOTE)"
    )
    parser.add_argument(
        "--hf-repo", default=None, help="shorthand for --remote hf://OWNER/REPO (env HF_REPO)"
    )
    parser.add_argument("--hf-token", default=None, help="Hub token (env HF_TOKEN)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _remote_url(args: argparse.Namespace) -> str | None:
    if args.remote:
        return args.remote
    if args.hf_repo:
        return f"hf://{args.hf_repo}"
    if os.environ.get("RELAY_REMOTE"):
        return os.environ["RELAY_REMOTE"]
    repo = os.environ.get("HF_REPO")
    return f"hf://{repo}" if repo else None


def run(args: argparse.Namespace) -> int:
    from relay.ids import InvalidIdError
    from relay.remote import RemoteError, open_remote
    from relay.remote.export import pull_export

    url = _remote_url(args)
    if url is None:
        print(
            f"{PROG}: error: no remote: pass --remote URL or --hf-repo OWNER/REPO (or set RELAY_REMOTE / HF_REPO)",
            file=sys.stderr,
        )
        return 2
    if args.step is not None and args.step < 0:
        print(f"{PROG}: error: --step must be a non-negative integer (got {args.step})", file=sys.stderr)
        return 2
    try:
        remote = open_remote(url, args.run_id, token=args.hf_token)
    except (ValueError, InvalidIdError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        got = pull_export(remote, args.dest, step=args.step, final=args.final, progress=not args.quiet)
    except RemoteError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    m = got.manifest
    print(
        f"pulled the {got.what} of run {m.run_id} (step {m.step}, epoch {m.epoch}, {len(m.files)} files, "
        f"{m.total_bytes / 1e6:.1f} MB) into {got.path}; every file matches its manifest"
    )
    return 0
