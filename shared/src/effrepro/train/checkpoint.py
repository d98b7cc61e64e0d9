"""Atomic, validated checkpoints and the RNG state that makes a resumed run equal an uninterrupted one.

Checkpoints are what users download and share, so a checkpoint is data, never code: every file is read with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples, dicts; no arbitrary classes or
functions), and :func:`save_checkpoint` refuses to write anything that could not be read back that way. A file
whose unpickling would import a function or class is refused with one :class:`UsageError` before any of it runs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

import numpy as np
import torch

from effrepro.errors import UsageError

T = TypeVar("T")


def _legacy_numpy_globals() -> list[Any]:
    """NumPy arrays, scalars and dtypes: the RNG state of checkpoints written before it was stored as tensors, and
    the ``best_acc``-style scalars of third-party checkpoints. Array contents go through the same restricted
    unpickler, so these add no way to run code."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        allowed += [getattr(core, name), (getattr(core, name), f"numpy.core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


LEGACY_GLOBALS = _legacy_numpy_globals()


# ---- kinds -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of file this repository writes: what it is and the command that writes it."""

    name: str
    what: str
    writer: str


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("train-state", "a training state (OUT/last.pt)",
         "the `train` command of the project (`<project> train --out OUT`)"),
    Kind("draft-head", "a trained draft head (OUT/head.pt)",
         "`python -m effrepro.specdec train-eagle`, `jakiro train` or `gumiho train`"),
    Kind("int8", "an int8 export (OUT/<stage>/model.int8.pt)",
         "`double_rounding train --stage multi|supernet --out OUT`"),
    Kind("ftp-plan", "an FTP plan file (OUT/plan.pt)",
         "`token_router_pruning train --out OUT` (or `token_router_pruning reproduce`: runs/ftp_<budget>.pt)"),
    Kind("student", "a distilled student (OUT/student.pt)", "`deepkd train` or `deepkd train-teacher`"),
    Kind("state-dict", "a bare model state dict", "`torch.save(model.state_dict(), path)`"),
)}


def file_kind(obj: Any) -> str | None:
    """The kind of a loaded checkpoint: its ``kind`` / ``format`` field, else recognised by its keys (files
    written before the field existed). ``None`` for anything else."""
    if not isinstance(obj, Mapping):
        return None
    kind = obj.get("kind")
    if kind == "ftp_plan":
        return "ftp-plan"
    if isinstance(kind, str) and kind in KINDS:
        return kind
    if isinstance(obj.get("format"), str) and obj["format"].startswith("effrepro-int8/"):
        return "int8"
    if {"model", "optimizer", "epoch", "rng"} <= set(obj):
        return "train-state"
    if {"config", "state_dict", "method"} <= set(obj):
        return "draft-head"
    if {"model", "arch"} <= set(obj):
        return "student"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state-dict"
    return None


def check_kind(obj: Any, path: str | os.PathLike, expect: str | tuple[str, ...]) -> None:
    """A :class:`UsageError` naming both kinds and the right writer when ``obj`` is a file of another known kind.

    Files of no recognisable kind pass (the caller's own key checks judge them)."""
    wanted = (expect,) if isinstance(expect, str) else tuple(expect)
    found = file_kind(obj)
    if found is None or found in wanted:
        return
    first = KINDS[wanted[0]]
    names = " or ".join(KINDS[k].what for k in wanted)
    raise UsageError(f"{path} is {KINDS[found].what}, written by {KINDS[found].writer}; expected {names}, "
                     f"written by {first.writer}")


def _wrong_types(cls: type, values: Mapping[str, Any]) -> list[str]:
    """Fields whose value does not match a scalar annotation (``int``, ``float``, ``bool``, ``str``, or one of
    them ``| None``); other annotations are not checked."""
    import types
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: leave the checks to the constructor
        return []
    scalars = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}
    wrong = []
    for name, value in values.items():
        hint = hints.get(name)
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is \
            typing.Union else (hint,)
        if not all(option in scalars or option is type(None) for option in options):
            continue
        accepted = tuple(t for option in options if option in scalars for t in scalars[option])
        if value is None and type(None) in options:
            continue
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in options):
            wrong.append(f"{name}={value!r}")
    return wrong


def config_from(cls: type[T], values: Any, source: str) -> T:
    """The dataclass ``cls`` from the config mapping stored in a checkpoint; one :class:`UsageError` (naming the
    fields) for a config that is not a mapping, has unknown fields or lacks required ones."""
    if not isinstance(values, Mapping):
        raise UsageError(f"{source}: its config is a {type(values).__name__}, not a mapping of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    missing = sorted(name for name, f in fields.items() if name not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
        parts = ([f"unknown fields {', '.join(map(str, unknown[:4]))}"] if unknown else []) + \
                ([f"missing fields {', '.join(missing[:4])}"] if missing else [])
        raise UsageError(f"{source}: its {cls.__name__} config does not fit this version ({'; '.join(parts)}); "
                         "write the file again with this version")
    wrong = _wrong_types(cls, values)
    if wrong:
        raise UsageError(f"{source}: its {cls.__name__} config has a wrong value type at {', '.join(wrong[:4])}; "
                         "write the file again with this version")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{source}: invalid {cls.__name__} config ({exc})") from None


# ---- save / load -------------------------------------------------------------------------------------
def to_plain(obj: Any) -> Any:
    """``obj`` with the harmless non-weight types our code paths produce turned into loadable ones: paths to
    strings, NumPy scalars to Python numbers, NumPy arrays to tensors. Containers are copied only where something
    changed (a state dict keeps its ``_metadata``)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        items = {k: to_plain(v) for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        copy = dict(items) if type(obj) is dict else OrderedDict(items)
        if type(obj) is not dict and hasattr(obj, "_metadata"):
            copy._metadata = obj._metadata  # type: ignore[attr-defined]
        return copy
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        values = [to_plain(v) for v in obj]
        if all(a is b for a, b in zip(values, obj, strict=True)):
            return obj
        return values if type(obj) is list else tuple(values)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)).clone()
    return obj


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """The functions / classes a file would import when unpickled and that ``weights_only`` does not allow
    (read statically, nothing is executed). Empty for a plain weights file, or one this cannot scan."""
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: fall back to the unpickler's own message
        return []


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: the permissions ``open()`` / ``mkdir()`` would give a new file / folder."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file in the same folder, then rename it into place.

    A crash mid-write leaves the previous checkpoint intact; readers never see a half-written file. The file
    must load with ``weights_only=True``; an object that would not (a class instance, a function) is a
    ``TypeError`` and the previous checkpoint stays in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(to_plain(obj), handle)
            handle.flush()
            os.fsync(handle.fileno())
        unsafe = unsafe_globals(tmp)
        if unsafe:
            raise TypeError(f"checkpoint {path} would need {', '.join(unsafe)} to load; store only tensors, "
                            "numbers, strings, lists, tuples and dicts (e.g. state_dict(), dataclasses.asdict())")
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600 files; give what open() would (0644 under umask 022)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _allowed_names() -> set[str]:
    names = {name for name in (f"{getattr(g, '__module__', '')}.{getattr(g, '__name__', '')}"
                               for g in LEGACY_GLOBALS if not isinstance(g, tuple))}
    names |= {g[1] for g in LEGACY_GLOBALS if isinstance(g, tuple)}
    try:
        from torch import _weights_only_unpickler

        names |= set(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # private API moved: the names are only used to word the refusal
        pass
    return names


def _pickle_globals(path: Path, pickles: int = 5) -> list[str]:
    """The globals named by the first pickles of a non-zip file (torch's legacy format is several pickles in a
    row; a bare pickle is one), read statically with :mod:`pickletools` (nothing is executed)."""
    import pickletools

    found: list[str] = []
    with open(path, "rb") as handle:
        for _ in range(pickles):
            strings: list[str] = []
            try:
                for op, arg, _ in pickletools.genops(handle):
                    if op.name == "GLOBAL" and isinstance(arg, str):
                        found.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # end of the pickles, or raw storage bytes
                break
    allowed = _allowed_names()
    return sorted({name for name in found if name not in allowed})


def _refused_globals(path: Path, exc: Exception) -> list[str]:
    found = unsafe_globals(path)
    if not found:
        try:
            found = _pickle_globals(path)
        except OSError:
            found = []
    if found:
        return found
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
    return [match.group(1)] if match else []


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", required: tuple[str, ...] = (),
                    expect: str | tuple[str, ...] | None = None) -> Any:
    """Load a checkpoint as data only, turning a missing, truncated, foreign or code-carrying file into one
    clear :class:`UsageError`.

    ``required`` lists top-level keys the checkpoint must hold (e.g. ``("model", "config")``); ``expect`` names
    the :data:`KINDS` accepted, so a file of another kind is refused with the command that writes the right one.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_globals(path, exc)
        if refused:
            raise UsageError(f"refusing to load {path}: it is not a plain weights file (unpickling it would "
                             f"import {', '.join(refused[:3])}, which could run code; checkpoints are read as "
                             "data only); for a third-party file you trust, save its state dict alone with "
                             "torch.save(state_dict, 'weights.pt') and pass that") from None
        raise UsageError(f"checkpoint {path} is corrupt or not a torch checkpoint (UnpicklingError)") from None
    except Exception as exc:  # truncated zip, pickle garbage, wrong format...
        raise UsageError(f"checkpoint {path} is corrupt or not a torch checkpoint ({type(exc).__name__})") from None
    if expect is not None:
        check_kind(obj, path, expect)
    missing = [key for key in required if not (isinstance(obj, dict) and key in obj)]
    if missing:
        raise UsageError(f"checkpoint {path} lacks {', '.join(missing)}; was it written by this project?")
    return obj


def load_state_dict_checked(module: torch.nn.Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """``module.load_state_dict`` with a one-line error naming missing/unexpected keys or shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"shape mismatch at {k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise UsageError(f"{source} does not match the model: {'; '.join(parts)}")
    module.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """Every RNG a training loop draws from: Python, NumPy, torch CPU and CUDA, as plain tensors / numbers (a
    checkpoint holding it loads with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also the older form with a Python tuple and a NumPy array)."""
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"])
    random.setstate(python)
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["name"], keys, numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
