"""Relay instrumentation, loaded by Python at start-up because the relay put this directory first on the
trainer's PYTHONPATH (trainer_blackbox/README.md §9).

Under the relay (RELAY_OUTPUT_DIR set) and unless RELAY_INSTRUMENT=0, it activates ``relay_inject``:
a SIGTERM handler and a post-import hook that instruments ``transformers.Trainer`` when the trainer
imports it.  Then it runs the ``sitecustomize`` this one shadows, if the environment has one (Debian's
Python, conda and some images ship their own), so nothing the environment relied on is lost.  A problem
here never stops the user's program: it is one line on stderr and the program runs uninstrumented, except
for a malformed RELAY_* variable, which is the relay's contract (exit 2, as any trainer would).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _activate() -> None:
    try:
        import relay_inject
    except Exception as exc:  # noqa: BLE001 - never break an unrelated interpreter
        print(f"relay-inject: not active: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return
    if not relay_inject.enabled():
        return
    try:
        relay_inject.activate()
    except relay_inject.EnvError as exc:
        print(f"relay-inject: error: {exc}", file=sys.stderr, flush=True)
        os._exit(2)


def _chain() -> None:
    """Run the next ``sitecustomize`` on sys.path (the one this module shadows), under its own name."""
    import importlib.machinery
    import importlib.util

    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - Python's own site.py reports and ignores such errors too
        print(
            f"relay-inject: error in {spec.origin}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True
        )


_activate()
_chain()
