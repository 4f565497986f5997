"""``relayctl submit run.yaml``: submit a run spec (YAML or JSON) to the commander as a job.

The file holds a :class:`~relay.schema.RunSpec`: ``run_id`` (optional), ``mode``, ``train``,
``remote``, ``max_restarts``, ``priority``, ``max_duration_s``, ``callbacks``.  It is checked
here first, with the same model the commander uses, so every problem in the file is listed, one
line each naming its key, before anything is sent (the dashboard's submit form checks a spec the same
way); submitting the same spec again is harmless (the commander answers with the existing run), a
different spec under an existing run id is refused.

The ``train:`` block is checked here too (the commander cannot: which trainer runs it is decided on
the pod).  It must be accepted by a trainer the worker may start for the spec's mode: the built-in
one (``trainer_blackbox/train_config.py``, pydantic only, imported lazily) or the mock
(``RELAY_TRAINER=mock`` on the pod; the submit side cannot see the pod's environment, so the union of
the two is accepted: mock keys keep working, a key neither knows is refused, named).
A spec with its own ``trainer_cmd`` takes any keys; so does a pod running a trainer of its own
(``RELAY_TRAINER_CMD``, ``SLIME_SFT_CMD`` / ``SLIME_RL_CMD``): submit such a spec with ``--no-validate``.
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
    """The spec file cannot be read or is not a valid spec.

    ``problems`` lists every problem found, one line each; ``str()`` is the single problem, or a
    header saying how many there are (the command prints them one per line)."""

    def __init__(self, name: str, problems: list[str], *, train_block: bool = False) -> None:
        self.name = name
        self.problems = problems
        self.train_block = train_block  # the train: block has problems (your own trainer: skip that check)
        if len(problems) == 1:
            message = f"{name}: {problems[0]}"
        else:
            message = f"{name}: {len(problems)} problems"
        super().__init__(message)

    def lines(self) -> list[str]:
        """What a person reads: the header, then one indented line per problem when there are several."""
        if len(self.problems) == 1:
            return [str(self)]
        return [f"{self}:", *(f"  - {p}" for p in self.problems)]


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
        first, *rest = exc.lines()
        if exc.train_block and rest:
            rest.append("(a trainer of your own, which takes any train: keys: --no-validate)")
        elif exc.train_block:
            first += " (a trainer of your own: --no-validate)"
        print(f"relayctl submit: error: {first}", *rest, sep="\n", file=sys.stderr)
        return EXIT_BAD_SPEC
    args._spec = spec
    return run_command("submit", _submit, args)


def load_spec(
    path: str, *, run_id: str | None = None, priority: int | None = None, validate_train: bool = True
) -> RunSpec:
    """Read and validate a spec file (see :func:`parse_spec`); ``-`` reads standard input."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecFileError(f"cannot read {name}", [reason]) from None
    return parse_spec(text, name, run_id=run_id, priority=priority, validate_train=validate_train)


def parse_spec(
    text: str,
    name: str,
    *,
    run_id: str | None = None,
    priority: int | None = None,
    validate_train: bool = True,
) -> RunSpec:
    """Validate a spec's text (YAML or JSON) with the commander's model and, unless ``validate_train`` is
    False, its train: block (:func:`train_block_problems`); raises SpecFileError listing every problem.

    The dashboard's submit form calls this too, so a spec is judged the same way wherever it comes from."""
    from pydantic import ValidationError

    from relay.schema import RunSpec
    from relay.yamlio import YamlError, load_yaml

    try:
        data = load_yaml(text)
    except YamlError as exc:
        raise SpecFileError(name, [str(exc)]) from None
    if not isinstance(data, dict):
        raise SpecFileError(name, ["must hold a mapping of spec keys (run_id, mode, train, ...)"])
    if run_id is not None:
        data["run_id"] = run_id
    if priority is not None:
        data["priority"] = priority
    data = _jsonable(data)
    problems: list[str] = []
    spec = None
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        problems += describe_errors(exc)
    train, mode = data.get("train", {}), data.get("mode", "sft")
    train_checked = not any(p.startswith("train") for p in problems)
    own_trainer = False
    own_cmd = isinstance(data.get("trainer_cmd"), str)  # a trainer_cmd of its own reads any keys
    if validate_train and train_checked and not own_cmd and isinstance(train, dict) and mode in ("sft", "rl"):
        found = train_block_problems(train, mode)
        problems += found
        own_trainer = bool(found)
    if problems or spec is None:
        raise SpecFileError(name, problems, train_block=own_trainer)
    return spec


def train_block_problems(train: dict[str, Any], mode: str) -> list[str]:
    """Nothing when the built-in trainer of ``mode`` or the mock trainer accepts ``train``; else every
    problem, one line each: keys neither knows, or else the problems of the trainer whose keys the block
    uses (the mock's when all its keys are mock keys, the built-in one's otherwise)."""
    import difflib

    from trainer_blackbox.mock_trainer import MOCK_KEYS
    from trainer_blackbox.train_config import MANAGED_KEYS, MODELS, TrainConfigError, validate_train_block

    known = [*MODELS[mode].model_fields, *MOCK_KEYS]
    unknown = [str(k) for k in train if k not in known]
    if unknown:
        problems = []
        for key in unknown:
            if key in MANAGED_KEYS:
                problems.append(f"train.{key}: not configurable here: {MANAGED_KEYS[key]}")
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(
                f"train.{key}: unknown key{hint} (neither the built-in {mode} trainer nor the mock knows it)"
            )
        return problems
    try:
        validate_train_block(train, mode)  # type: ignore[arg-type]
        return []
    except TrainConfigError as exc:
        builtin = exc.problems
    try:
        validate_train_block(train, "mock")
        return []
    except TrainConfigError as exc:
        mock = exc.problems
    if train and set(train) <= set(MOCK_KEYS):
        return [f"{p} (for the mock trainer)" for p in mock]
    return [f"{p} (for the built-in {mode} trainer)" for p in builtin]


def _jsonable(data: Any) -> Any:
    """YAML may hold dates and other non-JSON scalars; the spec goes over JSON, so convert them now."""
    return json.loads(json.dumps(data, default=str))


def describe_errors(exc: ValidationError) -> list[str]:
    """Every problem as 'key.sub: what is wrong': never the offending value (it may be a secret)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        key = ".".join(str(p) for p in error["loc"]) or "spec"
        if error["type"] == "extra_forbidden":
            message = "unknown key (keys: run_id, mode, train, remote, max_restarts, priority, max_duration_s, callbacks)"
        elif error["type"] == "missing":
            message = "required"
        else:
            message = error["msg"]
        problems.append(f"{key}: {message}")
    return problems


async def _submit(client: CommanderClient, args: argparse.Namespace) -> int:
    run, created = await client.submit_run(args._spec)
    if args.json:
        print(json.dumps({"created": created, "run": run.model_dump(mode="json")}, indent=2))
    elif created:
        print(f"submitted run {run.run_id} ({run.status.value}, mode {run.mode}, priority {run.priority})")
    else:
        print(f"run {run.run_id} was already submitted with this spec; it is {run.status.value}")
    return 0
