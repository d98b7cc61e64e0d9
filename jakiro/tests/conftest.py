"""Work-around for pytest's ``--import-mode=importlib`` in this monorepo layout.

pytest names this folder's modules ``jakiro.tests.*`` (from the rootdir) and registers the *project folder*
``jakiro/`` as a namespace package ``jakiro``, which hides the installed package ``jakiro`` (``jakiro/src/jakiro``).
Swap the real package back in before any test module imports from it.
"""

import importlib
import sys

_shadow = sys.modules.get("jakiro")
if _shadow is not None and getattr(_shadow, "__file__", None) is None:
    del sys.modules["jakiro"]
    importlib.import_module("jakiro")
