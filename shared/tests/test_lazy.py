"""effrepro.lazy: a package's exports resolve on first access, from the module that defines them."""

import sys
import types

import pytest
from effrepro.lazy import lazy_exports


def test_names_resolve_lazily_and_unknown_names_raise():
    package = types.ModuleType("fake_pkg")
    sys.modules["fake_pkg"] = package
    try:
        package.__getattr__, package.__dir__ = lazy_exports("fake_pkg", {"json.decoder": ("JSONDecoder",),
                                                                         "textwrap": ("dedent",)})
        import json.decoder
        import textwrap

        assert "dedent" not in vars(package)
        assert package.dedent is textwrap.dedent
        assert vars(package)["dedent"] is textwrap.dedent  # cached after the first access
        assert package.JSONDecoder is json.decoder.JSONDecoder
        assert {"JSONDecoder", "dedent"} <= set(dir(package))
        with pytest.raises(AttributeError, match="no attribute 'missing'"):
            package.missing  # noqa: B018
    finally:
        del sys.modules["fake_pkg"]
