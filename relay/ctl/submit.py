"""``relayctl submit run.yaml``: submit a run spec (YAML or JSON) to the commander as a job.

The file holds a :class:`~relay.schema.RunSpec`: ``run_id`` (optional), ``mode``, ``train``,
``remote``, ``max_restarts``, ``priority``, ``max_duration_s``, ``callbacks``.  It is checked
here first, with the same model the commander uses, so a typo is one line naming the key before
anything is sent; submitting the same spec again is harmless (the commander answers with the
existing run), a different spec under an existing run id is refused.

The ``train:`` block is checked here too (the commander cannot: which trainer runs it is decided on
the pod).  It must be accepted by a trainer the worker may start for the spec's mode: the built-in
one (``trainer_blackbox/train_config.py``, pydantic only, imported lazily) or the mock
(``RELAY_TRAINER=mock`` on the pod; the submit side cannot see the pod's environment, so the union of
the two is accepted: mock keys keep working, a key neither knows is refused with one line naming it).
A spec with its own ``trainer_cmd`` takes any keys; so does a pod running a trainer of its own
(``RELAY_TRAINER_CMD``): submit such a spec with ``--no-validate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.ctl.common import add_commander_arguments, run_command

if TYPE_CHECKING:
    from pydantic import ValidationError

    from relay.client import CommanderClient
    from relay.schema import RunSpec

EXIT_BAD_SPEC = 2


class SpecFileError(Exception):
    """The spec file cannot be read or is not a valid spec; str() is one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="run spec file (YAML or JSON); - reads standard input")
    parser.add_argument("--run-id", default=None, help="use this run id (overrides the file's run_id)")
    parser.add_argument("--priority", type=int, default=None, help="override the file's priority")
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="do not check the train: block against the built-in and mock trainers' keys "
        "(for your own trainer: SLIME_SFT_CMD / SLIME_RL_CMD)",
    )
    add_commander_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(
            args.spec,
            run_id=args.run_id,
            priority=args.priority,
            validate_train=not getattr(args, "no_validate", False),
        )
    except SpecFileError as exc:
        print(f"relayctl submit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    args._spec = spec
    return run_command("submit", _submit, args)


def load_spec(
    path: str, *, run_id: str | None = None, priority: int | None = None, validate_train: bool = True
) -> RunSpec:
    """Read and validate a spec file (and its train: block, see :func:`train_block_problem`, unless
    ``validate_train`` is False); raises SpecFileError with one line naming the problem."""
    from pydantic import ValidationError

    from relay.schema import RunSpec
    from relay.yamlio import YamlError, load_yaml

    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecFileError(f"cannot read {name}: {reason}") from None
    try:
        data = load_yaml(text)
    except YamlError as exc:
        raise SpecFileError(f"{name}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{name} must hold a mapping of spec keys (run_id, mode, train, ...)")
    if run_id is not None:
        data["run_id"] = run_id
    if priority is not None:
        data["priority"] = priority
    try:
        spec = RunSpec.model_validate(_jsonable(data))
    except ValidationError as exc:
        raise SpecFileError(f"{name}: {describe_errors(exc)}") from None
    if validate_train and spec.trainer_cmd is None:  # a trainer_cmd of its own reads any keys
        problem = train_block_problem(spec.train, spec.mode)
        if problem is not None:
            raise SpecFileError(f"{name}: {problem} (a trainer of your own: --no-validate)")
    return spec


def train_block_problem(train: dict[str, Any], mode: str) -> str | None:
    """None when the built-in trainer of ``mode`` or the mock trainer accepts ``train``; else one line
    naming the key: first a key neither knows, then the problem the trainer whose keys the block uses
    reports (the mock's when all its keys are mock keys, the built-in one's otherwise)."""
    import difflib

    from trainer_blackbox.mock_trainer import MOCK_KEYS
    from trainer_blackbox.train_config import MANAGED_KEYS, MODELS, TrainConfigError, validate_train_block

    known = [*MODELS[mode].model_fields, *MOCK_KEYS]
    unknown = [str(k) for k in train if k not in known]
    if unknown:
        key = unknown[0]
        more = (
            f" (and {len(unknown) - 1} more unknown key{'s' if len(unknown) > 2 else ''})"
            if unknown[1:]
            else ""
        )
        if key in MANAGED_KEYS:
            return f"train.{key}: not configurable here: {MANAGED_KEYS[key]}{more}"
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"train.{key}: unknown key{hint}{more} (neither the built-in {mode} trainer nor the mock knows it)"
    try:
        validate_train_block(train, mode)  # type: ignore[arg-type]
        return None
    except TrainConfigError as exc:
        builtin = str(exc)
    try:
        validate_train_block(train, "mock")
        return None
    except TrainConfigError as exc:
        mock = str(exc)
    if train and set(train) <= set(MOCK_KEYS):
        return f"{mock} (for the mock trainer)"
    return f"{builtin} (for the built-in {mode} trainer)"


def _jsonable(data: Any) -> Any:
    """YAML may hold dates and other non-JSON scalars; the spec goes over JSON, so convert them now."""
    return json.loads(json.dumps(data, default=str))


def describe_errors(exc: ValidationError) -> str:
    """'key.sub: what is wrong (and N more problems)': never the offending value (it may be a secret)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    key = ".".join(str(p) for p in first["loc"]) or "spec"
    if first["type"] == "extra_forbidden":
        message = "unknown key (keys: run_id, mode, train, remote, max_restarts, priority, max_duration_s, callbacks)"
    elif first["type"] == "missing":
        message = "required"
    else:
        message = first["msg"]
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return f"{key}: {message}"


async def _submit(client: CommanderClient, args: argparse.Namespace) -> int:
    run, created = await client.submit_run(args._spec)
    if args.json:
        print(json.dumps({"created": created, "run": run.model_dump(mode="json")}, indent=2))
    elif created:
        print(f"submitted run {run.run_id} ({run.status.value}, mode {run.mode}, priority {run.priority})")
    else:
        print(f"run {run.run_id} was already submitted with this spec; it is {run.status.value}")
    return 0
