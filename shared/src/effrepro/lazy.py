"""Lazy public APIs: a project's ``__init__`` exports its method without importing torch at ``import <project>``.

Every project's console script imports the project package first, so an ``__init__`` that imported the method
module would make ``<project> --help`` pay for torch (seconds). Instead the package names its exports here and
the first attribute access imports the defining module (PEP 562 module ``__getattr__``)::

    __getattr__, __dir__ = lazy_exports(__name__, {"deepkd.deepkd": ("deepkd_optimizer", "TopKSchedule")})
"""

from __future__ import annotations

import importlib
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
