"""Checks every command runs on its paths before any work, and temporary folders that never outlive their run.

A command calls :func:`check_output_dir` / :func:`check_output_file` for what it will write and
:func:`check_input_file` for what it reads, first thing: a mistake is then one ``error:`` line (a
:class:`~effrepro.errors.UsageError`) before minutes of work, and nothing is created on the way (the output folder
is made only when the work starts). Folders built in a cache are written under a temporary name by
:func:`temporary_folder` (removed on any exit: an error, Ctrl-C, or SIGTERM under ``run_cli``) and moved into
place; one left by a killed process (SIGKILL, power loss) is removed by the next run with :func:`remove_stale`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from effrepro.errors import UsageError


def _nearest_existing(path: Path) -> Path:
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _can_create_in(folder: Path) -> bool:
    """Create and remove a probe file: unlike ``os.access`` this also tells a read-only file system (or a root
    user's view of one) from a writable folder."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` is, or can be created as, a writable folder; nothing is created. One error line if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file, not a folder; choose another {option}")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder; choose another {option}")
    if not _can_create_in(existing):
        raise UsageError(f"{option} {path}: {existing} is not writable; choose another {option}")
    return path


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` can be written as a file (its folder is creatable and writable; it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    check_output_dir(path.parent, option)
    return path


def check_input_file(path: str | os.PathLike, option: str, hint: str = "") -> Path:
    """``path`` is an existing, readable, non-empty file. ``hint`` says which command writes one."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.exists():
        raise UsageError(f"{option} {path}: not found{tail}")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file{tail}")
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be read ({exc.strerror}){tail}") from None
    if empty:
        raise UsageError(f"{option} {path}: the file is empty{tail}")
    return path


def _prefix(name: str) -> str:
    return f".{name}-{os.getpid()}-"


def make_temporary_folder(parent: str | os.PathLike, name: str) -> Path:
    """A fresh ``parent/.<name>-<pid>-XXXX`` folder (mode as a new folder under the umask, not mkdtemp's 0700),
    after removing the stale ones of processes that are gone. The caller removes it (``finally``)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, name)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(name), dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


@contextmanager
def temporary_folder(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """:func:`make_temporary_folder`, removed when the block ends however it ends (move its content into place
    inside the block)."""
    tmp = make_temporary_folder(parent, name)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove ``parent/.<name>-<pid>-*`` folders whose process is gone (killed before it could clean up), and
    ``.<name>-XXXX`` ones of the former unnamed layout. Returns what was removed."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{name}-*"):
        pid, sep, _ = path.name[len(name) + 2:].partition("-")
        if sep and pid.isdigit() and _alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_input_folder(path: str | os.PathLike, option: str, hint: str = "") -> Path:
    """``path`` is an existing folder."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_dir():
        raise UsageError(f"{option} {path}: {'is a file, not a folder' if path.exists() else 'folder not found'}{tail}")
    return path


def check_args(args: Any, dirs: Iterable[str] = (), files: Iterable[str] = (), inputs: Iterable[str] = (),
               folders: Iterable[str] = (), positive: Iterable[str] = ()) -> None:
    """A command's paths and counts, named by their ``argparse`` attributes, checked before any work: output
    folders (``dirs``) and files (``files``), input files (``inputs``) and folders (``folders``), and integers
    that must be >= 1 (``positive``). Attributes that are unset (``None`` / empty) are skipped."""
    def option(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"{option(name)} must be >= 1, got {value}")
    for names, check in ((dirs, check_output_dir), (files, check_output_file), (inputs, check_input_file),
                         (folders, check_input_folder)):
        for name in names:
            if getattr(args, name, None):
                check(getattr(args, name), option(name))
