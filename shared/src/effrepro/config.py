"""Dataclass configs from YAML files or dicts, with ``key=value`` overrides and strict key checking."""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from effrepro.errors import UsageError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``3``, ``0.1``, ``true``, ``[8, 4]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"cannot parse override value {text!r}: {exc}") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Light type coercion for values read from YAML (int -> float, list -> tuple); reject obvious misfits."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key) if len(args) == 1 else value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UsageError(f"config key {key!r} must be a mapping, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and value is not None and not isinstance(value, tp):
        raise UsageError(f"config key {key!r} expects {tp.__name__}, got {value!r}")
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is list and isinstance(value, tuple):
        return list(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    types_by_name = _field_types(cls)
    unknown = sorted(set(data) - set(types_by_name))
    if unknown:
        valid = ", ".join(sorted(types_by_name))
        raise UsageError(f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__}; valid keys: {valid}")
    kwargs = {k: _coerce(v, types_by_name[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid {cls.__name__} config: {exc}") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"override {dotted!r}: {part!r} is not a nested config")
    node[leaf] = value


def load_config(source: str | Path | dict | None, cls: type[T], overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML file, a dict or nothing (defaults), then apply ``key=value`` overrides.

    An unknown key (in the file or an override) raises :class:`UsageError` naming it and the valid keys.
    """
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}" + (" (a folder)" if path.is_dir() else ""))
        try:
            text = path.read_text()
            data = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"config file {path} cannot be read as YAML text ({exc})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if data is None:
            raise UsageError(f"config file {path} is empty; give at least one key (or no config file)")
        if not isinstance(data, dict):
            raise UsageError(f"config file {path} must hold a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        _set_dotted(data, key.strip(), _parse_scalar(text))
    return _build(cls, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a (nested) dataclass config."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as the YAML :func:`load_config` reads back into the same dataclass, atomically (a job
    launched on the file, e.g. a torchrun job, never reads half of it)."""
    from effrepro.report import atomic_write_text  # report pulls in scipy: only writers pay for it

    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def package_configs(package: str) -> Path:
    """The ``configs`` folder shipped inside ``package`` as package data.

    Found with :mod:`importlib.resources`, so it is the same folder from a source checkout (``src/<pkg>/configs``
    links to the project's ``configs/``), an editable install and a regular ``pip install``.
    """
    return Path(str(importlib.resources.files(package) / "configs"))


def find_config(name: str | Path, package: str) -> Path:
    """``name`` if it is a file, else that path inside ``package``'s shipped configs (``--config imagenet_t2.yaml``
    works from any folder and from a regular install); a missing file is one :class:`UsageError`."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = package_configs(package) / path
    if shipped.is_file():
        return shipped
    raise UsageError(f"config file not found: {path} (neither a file nor one of {package_configs(package)})")
