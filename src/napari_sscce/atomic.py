"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed over the target.

Temporary files are named ``.<target name>.sscce-tmp-<random><suffix>`` (:data:`TEMP_MARKER`), so that a
folder's owner can recognise and remove those a killed process left behind
(:func:`remove_stale_temporaries`; only while no other process writes to that folder).

:func:`crash_point` lets tests and ``benchmarks/reliability.py`` kill a process at a named point
(``SSCCE_CRASH_AT=<point>[@<n>]``, the n-th time the point is reached; the process ends with
``os._exit(CRASH_EXIT_CODE)``, as abruptly as a power cut for the files written so far).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: part of every temporary file name made by :func:`atomic_path`
TEMP_MARKER = ".sscce-tmp-"
#: environment variable naming the crash point (tests and benchmarks only)
CRASH_ENV = "SSCCE_CRASH_AT"
#: exit status of a process stopped by :func:`crash_point`
CRASH_EXIT_CODE = 86
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """End the process at once when ``$SSCCE_CRASH_AT`` names this point (testing crash safety).

    ``SSCCE_CRASH_AT="atomic.written@3"`` ends the process the third time ``atomic.written`` is reached
    (``@1`` when omitted). Costs one dictionary lookup when the variable is unset.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] == int(nth or 1):
        os._exit(CRASH_EXIT_CODE)


def is_temporary(path: str | os.PathLike) -> bool:
    """True for a temporary file name made by :func:`atomic_path`."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARKER in name


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> tuple[int, int]:
    """Delete the temporary files of :func:`atomic_path` in ``folder`` (a crash left them).

    Call it only while no other process writes to ``folder`` (under its lock). Only files named as
    :func:`atomic_path` names them are removed.

    Returns
    -------
    tuple of int
        Number of files removed and their total size in bytes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0, 0
    candidates = folder.rglob(f".*{TEMP_MARKER}*") if recursive else folder.glob(f".*{TEMP_MARKER}*")
    count = size = 0
    for path in candidates:
        if path.is_file() and not path.is_symlink() and is_temporary(path):
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
                path.unlink()
                count += 1
    return count, size


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The caller writes the whole file to the yielded path (with any library). If the block raises,
    the temporary file is removed and ``path`` keeps its old content.

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix of the temporary file (some writers pick the format from it, e.g. ``".nii.gz"``).
        Defaults to the destination's own suffixes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        crash_point("atomic.written")
        # mkstemp creates 0600 files: give the result the permissions a plain open() would have
        # (those of the file it replaces, else 0666 minus the umask)
        os.chmod(tmp_path, _target_mode(path))
        os.replace(tmp_path, path)
        crash_point("atomic.replaced")
        with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _target_mode(path: Path) -> int:
    """Permission bits for a file written to ``path``."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())
