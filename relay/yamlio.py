"""Reading YAML a person wrote (the worker's run.yaml, a job spec, a ``TRAIN`` variable) with one-line errors.

Both the worker's config and ``relayctl submit`` read hand-written YAML, and both must answer a
mistake with one line that says where it is, never a traceback.  PyYAML raises more than
``YAMLError`` on bad input: an impossible date (``2024-13-45``) is a ``ValueError`` from ``datetime``
and deep nesting a ``RecursionError``.  :func:`load_yaml` turns all of them into :class:`YamlError`.
"""

from __future__ import annotations

from typing import Any


class YamlError(ValueError):
    """YAML that cannot be read; ``str()`` is one line: ``invalid YAML: line L, column C: problem``."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        self.problem = problem
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"invalid YAML: {where}{problem}".replace("\n", " "))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, raising :class:`YamlError` (one line, with the position) on any problem."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is not None:
            raise YamlError(problem, mark.line + 1, mark.column + 1) from None
        raise YamlError(problem) from None
    except RecursionError:
        raise YamlError("nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a scalar PyYAML resolved but cannot build, e.g. a bad date
        raise YamlError(
            f"bad value: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
