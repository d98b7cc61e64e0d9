"""Lazy public APIs: a project's ``__init__`` exports its method without importing torch at ``import <project>``.

Every project's console script imports the project package first, so an ``__init__`` that imported the method
module would make ``<project> --help`` pay for torch (seconds). Instead the package names its exports here and
the first attribute access imports the defining module (PEP 562 module ``__getattr__``)::

    __getattr__, __dir__ = lazy_exports(__name__, {"deepkd.deepkd": ("deepkd_optimizer", "TopKSchedule")})
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Iterable[str]]) -> tuple[Callable[[str], Any],
                                                                             Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``exports`` maps a module to the names it defines."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__


class _AfterImport(importlib.abc.MetaPathFinder):
    """Imports the modules waiting on a trigger module right after the trigger first executes."""

    pending: dict[str, list[str]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        waiting = self.pending.pop(fullname, None)
        if waiting is None:
            return None
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the real finders (this one no longer answers for it)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                for name in waiting:
                    importlib.import_module(name)

        spec.loader = _Then()
        return spec


_HOOK = _AfterImport()


def import_after(trigger: str, module: str) -> None:
    """Import ``module`` as soon as ``trigger`` is imported (now, if it already is).

    For a package whose import registers models with a library (timm): ``import partialnet`` stays cheap (its
    console script's ``--help`` loads no torch), and ``timm.create_model("partialnet_t2")`` works whether timm was
    imported before or after the package.
    """
    if trigger in sys.modules:
        importlib.import_module(module)
        return
    waiting = _AfterImport.pending.setdefault(trigger, [])
    if module not in waiting:
        waiting.append(module)
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
