"""Errors a person can cause, said as what to do (no errno, no traceback)."""

from __future__ import annotations

import errno
from pathlib import Path


def explain_error(exc: BaseException, folder: str | Path | None = None) -> str:
    """One or two sentences for ``exc``: what went wrong and what to do.

    Parameters
    ----------
    exc : BaseException
        The error; ``OSError`` gets a plain-words reading of its errno, other errors their own message.
    folder : path-like, optional
        The folder being written (the workspace), named in the advice.
    """
    if not isinstance(exc, OSError) or exc.errno is None:
        return str(exc)
    where = str(folder or exc.filename or "the folder")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"Cannot write to {where}: it is read-only or you lack permission. Choose another workspace "
            "folder (the … button) or make this one writable."
        )
    if exc.errno == errno.ENOSPC:
        return f"The disk holding {where} is full: free some space or choose a workspace on another disk."
    if exc.errno == errno.ENOENT:
        return f"{exc.filename or where} does not exist (moved or deleted?): choose the folder again."
    return f"Cannot use {where} ({exc.strerror or exc}): check that the folder exists and is writable."
