"""Work-around for pytest's ``--import-mode=importlib`` in this monorepo layout.

pytest names this folder's modules ``kerneldna.tests.*`` (from the rootdir) and registers the *project folder*
``kerneldna/`` as an empty namespace package ``kerneldna``, which hides the installed package
(``kerneldna/src/kerneldna``). Put the real package back before any test module imports from it.
"""

import importlib
import sys

_shadow = sys.modules.get("kerneldna")
if _shadow is not None and getattr(_shadow, "__file__", None) is None:
    del sys.modules["kerneldna"]
    importlib.import_module("kerneldna")
