"""Post-import hooks (stdlib only): run a function on a module right after it is first imported.

The instrumentation must patch ``transformers.Trainer`` without importing transformers itself (an
unrelated Python process, or a trainer that never builds a Trainer, must not pay for it) and without the
user's code knowing.  A finder placed first on ``sys.meta_path`` answers for the watched module names only:
it asks the other finders for the real spec and wraps its loader, so the hook runs once the module has
executed, before anyone gets it from the import statement.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]

Hook = Callable[[ModuleType], None]


class _HookedLoader(importlib.abc.Loader):
    """The real loader, plus the hooks after ``exec_module``; everything else is delegated."""

    def __init__(self, loader: Any, hooks: list[Hook]) -> None:
        self._loader = loader
        self._hooks = hooks

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for hook in self._hooks:
            hook(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, resource readers...
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.hooks: dict[str, list[Hook]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        hooks = self.hooks.get(fullname)
        if not hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, list(hooks))
                return spec
        return None


_FINDER = _PostImportFinder()


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once module ``name`` is imported (at once when it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    _FINDER.hooks.setdefault(name, []).append(hook)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
