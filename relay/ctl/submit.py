"""``relayctl submit run.yaml``: submit a run spec (YAML or JSON) to the commander as a job.

The file holds a :class:`~relay.schema.RunSpec`: ``run_id`` (optional), ``mode``, ``train``,
``remote``, ``max_restarts``, ``priority``, ``max_duration_s``, ``callbacks``.  It is checked
here first, with the same model the commander uses, so a typo is one line naming the key before
anything is sent; submitting the same spec again is harmless (the commander answers with the
existing run), a different spec under an existing run id is refused.
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
    add_commander_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec, run_id=args.run_id, priority=args.priority)
    except SpecFileError as exc:
        print(f"relayctl submit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    args._spec = spec
    return run_command("submit", _submit, args)


def load_spec(path: str, *, run_id: str | None = None, priority: int | None = None) -> RunSpec:
    """Read and validate a spec file; raises SpecFileError with one line naming the problem."""
    import yaml
    from pydantic import ValidationError

    from relay.schema import RunSpec

    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecFileError(f"cannot read {name}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecFileError(f"{name} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{name} must hold a mapping of spec keys (run_id, mode, train, ...)")
    if run_id is not None:
        data["run_id"] = run_id
    if priority is not None:
        data["priority"] = priority
    try:
        return RunSpec.model_validate(_jsonable(data))
    except ValidationError as exc:
        raise SpecFileError(f"{name}: {describe_errors(exc)}") from None


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
