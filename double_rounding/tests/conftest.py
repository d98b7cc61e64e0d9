"""Work-around for pytest's ``--import-mode=importlib`` in this monorepo layout.

pytest names this folder's modules ``double_rounding.tests.*`` (from the rootdir) and registers the project
folder ``double_rounding/`` as an empty namespace package, which hides the installed package
(``double_rounding/src/double_rounding``). Put the real package back before any test module imports from it.
"""

import importlib
import sys

_shadow = sys.modules.get("double_rounding")
if _shadow is not None and getattr(_shadow, "__file__", None) is None:
    del sys.modules["double_rounding"]
    importlib.import_module("double_rounding")
