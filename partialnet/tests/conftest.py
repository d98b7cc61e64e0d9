"""Work-around for pytest's ``--import-mode=importlib`` in this monorepo layout.

pytest names this folder's modules ``partialnet.tests.*`` (from the rootdir) and registers the project folder
``partialnet/`` as a namespace package ``partialnet``, which hides the installed package
(``partialnet/src/partialnet``). Swap the real package back in before any test module imports from it.
"""

import importlib
import sys

_shadow = sys.modules.get("partialnet")
if _shadow is not None and getattr(_shadow, "__file__", None) is None:
    del sys.modules["partialnet"]
    importlib.import_module("partialnet")
