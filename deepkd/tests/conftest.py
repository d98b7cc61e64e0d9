"""Work-around for pytest's ``--import-mode=importlib`` in this monorepo layout.

pytest names this folder's modules ``deepkd.tests.*`` (from the rootdir) and registers the project folder
``deepkd/`` as an empty namespace package ``deepkd``, which hides the installed package (``deepkd/src/deepkd``).
Put the real package back before any test module imports from it.
"""

import importlib
import sys

_shadow = sys.modules.get("deepkd")
if _shadow is not None and getattr(_shadow, "__file__", None) is None:
    del sys.modules["deepkd"]
    importlib.import_module("deepkd")
