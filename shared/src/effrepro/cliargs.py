"""Command-line pieces every project CLI shares, so that one spelling works everywhere.

Config overrides are ``--set KEY=VALUE`` (dotted keys, repeatable), as in ``<paper> reproduce``. The older
spellings (positional ``key=value`` words, ``--cfg``, ``--config-set``) still work for now: they raise a
``DeprecationWarning``, which Python shows only with ``-W default`` so that an error stays one ``error:`` line.

This module imports nothing heavy: a ``--help`` must not wait for torch.
"""

from __future__ import annotations

import argparse
import warnings

from effrepro.errors import UsageError


def add_set(parser: argparse.ArgumentParser, example: str, positional_alias: bool = True) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``; ``positional_alias`` keeps bare ``key=value``
    words working (hidden from ``--help``, deprecated)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override with a dotted key, repeatable (e.g. --set {example})")
    if positional_alias:
        parser.add_argument("legacy_overrides", nargs="*", help=argparse.SUPPRESS)


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items (then any deprecated positional ones), each checked to be ``key=value``."""
    legacy = list(getattr(args, "legacy_overrides", None) or [])
    if legacy:
        warnings.warn(f"positional overrides are deprecated; write --set {' --set '.join(legacy)}",
                      DeprecationWarning, stacklevel=2)
    items = [*getattr(args, "overrides", []), *legacy]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"override {item!r} is not key=value; write --set KEY=VALUE with a dotted config key")
    return items


def rename_option(argv: list[str], old: str, new: str) -> list[str]:
    """``argv`` with the deprecated option ``old`` (``old X`` or ``old=X``) spelled ``new``."""
    out, warned = [], False
    for item in argv:
        if item == "--":
            out.extend(argv[len(out):])
            break
        if item == old or item.startswith(old + "="):
            if not warned:
                warnings.warn(f"{old} is deprecated; write {new}", DeprecationWarning, stacklevel=2)
                warned = True
            item = new + item[len(old):]
        out.append(item)
    return out


def route_set(argv: list[str], plan_fields: set[str], config_option: str | None) -> list[str]:
    """``reproduce`` arguments with each ``--set KEY=VALUE`` whose key is not a plan field (a run-config key, often
    dotted) handed to the paper's run-config option ``config_option`` (``None``: a positional ``KEY=VALUE``), so
    that one ``--set`` reaches both; the run-config loader rejects unknown keys with one error line."""
    keep: list[str] = []
    moved: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--":
            keep.extend(items[i:])
            break
        value = None
        if item == "--set" and i + 1 < len(items):
            value, step = items[i + 1], 2
        elif item.startswith("--set="):
            value, step = item[len("--set="):], 1
        if value is None or value.partition("=")[0].strip() in plan_fields:
            keep.append(item)
            i += 1
            continue
        moved.extend([config_option, value] if config_option else [value])
        i += step
    return keep + moved if "--" not in keep else keep[:keep.index("--")] + moved + keep[keep.index("--"):]


def reproduce_command(module: str, argv: list[str], config_option: str | None = None) -> int:
    """``<paper> reproduce ...``: ``module.REPRODUCTION`` (the paper's reproduce skeleton) with each ``--set`` routed
    to a plan field or, for the keys no plan declares, to the paper's run config (``config_option``, see
    :func:`route_set`); ``config_option`` is also accepted as a deprecated spelling of ``--set``."""
    import dataclasses
    import importlib

    reproduction = importlib.import_module(module).REPRODUCTION
    fields = {f.name for plan in reproduction.plans.values() for f in dataclasses.fields(plan)}
    if config_option:
        argv = rename_option(argv, config_option, "--set")
    return reproduction.main(route_set(argv, fields, config_option))
