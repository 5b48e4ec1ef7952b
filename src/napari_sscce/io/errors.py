"""The one exception type of :mod:`napari_sscce.io`: a bad or unreadable file."""

from __future__ import annotations

import os
from pathlib import Path


class VolumeError(ValueError):
    """A file or folder cannot be used as a volume, label map or dataset.

    The message always starts with the file's path and then says what is wrong with it,
    e.g. ``"/data/x.nii.gz: is 2D (shape (256, 256)); napari-sscce segments 3D volumes"``.

    Parameters
    ----------
    path : path-like or None
        The offending file or folder.
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        where = str(self.path) if self.path is not None else "<in-memory volume>"
        super().__init__(f"{where}: {problem}")
