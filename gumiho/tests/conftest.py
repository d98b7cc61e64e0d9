"""Work-around for pytest's ``--import-mode=importlib`` in this monorepo layout.

pytest names this folder's modules ``gumiho.tests.*`` (from the rootdir) and registers the *project folder*
``gumiho/`` as a namespace package ``gumiho``, which hides the installed package ``gumiho`` (``gumiho/src/gumiho``).
Swap the real package back in before any test module imports from it.
"""

import importlib
import sys

_shadow = sys.modules.get("gumiho")
if _shadow is not None and getattr(_shadow, "__file__", None) is None:
    del sys.modules["gumiho"]
    importlib.import_module("gumiho")
