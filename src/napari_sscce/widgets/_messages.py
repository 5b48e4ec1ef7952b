"""Errors a person can cause, said as what to do (no errno, no traceback)."""

from __future__ import annotations

import errno
import weakref
from pathlib import Path
from typing import Any

#: layers whose assumed spacing the person was already told about (one note per layer and session)
_TOLD: weakref.WeakSet = weakref.WeakSet()
#: the layer metadata key a reader sets when the file stores no voxel size (``io.formats.read_h5``)
SPACING_ASSUMED = "spacing_assumed"


def assumed_spacing_note(layer: Any) -> str:
    """A sentence, the first time only, saying which voxel size was assumed for ``layer``'s file; else "".

    A reader that finds no spacing in a file (an LA ``.h5`` without a ``spacing`` attribute) records what
    it assumed in the layer's metadata; the person is told once, not at every run.
    """
    assumed = (getattr(layer, "metadata", None) or {}).get(SPACING_ASSUMED)
    if not assumed or layer in _TOLD:
        return ""
    _TOLD.add(layer)
    return (
        f"note: {layer.name}'s file stores no voxel size, so {assumed} was assumed from its format. If the "
        "scan's voxels are another size, set the layer's scale (or save it as NIfTI with its spacing)."
    )


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
