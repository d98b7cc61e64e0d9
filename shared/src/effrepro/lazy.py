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


def _initializing(package: str) -> bool:
    """Whether a module of ``package`` is being executed right now (an import of it is in flight)."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items()) if name == package or name.startswith(package + "."))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Imports the modules waiting on a trigger module right after the trigger first executes.

    When the trigger is first imported by the waiting module's own package (``kerneldna.dynamic`` imports timm
    while ``kerneldna.models`` waits on timm), importing the waiting module there would be a circular import: it is
    deferred to the next import anywhere, once no module of that package is executing.
    """

    pending: dict[str, list[str]] = {}
    deferred: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        self.run_deferred()
        waiting = self.pending.pop(fullname, None)
        if waiting is None:
            return None
        spec = importlib.util.find_spec(fullname)  # the real finders (this one no longer answers for it)
        if spec is None or spec.loader is None:
            return spec
        loader, hook = spec.loader, self

        class _Then(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                hook.deferred.extend(waiting)
                hook.run_deferred()

        spec.loader = _Then()
        return spec

    def run_deferred(self) -> None:
        for name in list(self.deferred):
            if not _initializing(name.split(".")[0]):
                self.deferred.remove(name)
                importlib.import_module(name)
        if not self.pending and not self.deferred and self in sys.meta_path:
            sys.meta_path.remove(self)


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
