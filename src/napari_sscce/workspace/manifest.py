"""The workspace manifest: its constants, records, format checks and errors (no writes here)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_sscce.io.readers import read_volume
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume
from napari_sscce.workspace.files import (
    CASE_FILE,
    VERSION_DIR,
    write_problem,
)

MANIFEST = "manifest.json"
LOCK = "manifest.lock"
SPLITS = "splits.json"
FORMAT_VERSION = 1
VOLUME_SUFFIX = ".nii.gz"
CASE_FOLDERS = ("images", "labels", "masks")
#: seconds to wait for another process's manifest change before giving up
LOCK_TIMEOUT = 120.0
#: a case file written by :meth:`Workspace.add_case`: ``<case>__<8 hex digits>.nii.gz``
_CASE_FILE = CASE_FILE
_VERSION_DIR = VERSION_DIR
#: relative tolerance on the spacing of labels / masks against their image
SPACING_RTOL = 1e-3
MAX_NAME_LENGTH = 80
#: labels are stored as uint8: without a known number of classes, 0..255
MAX_STORED_LABEL = 255
RUNS = "runs"
#: finished run folders kept (their small logs; the large files go when the run ends)
KEEP_RUNS = 5
#: at most this many bytes of finished run folders are kept
MAX_RUN_BYTES = 500 * 1024 * 1024
#: a run marked running on another machine, older than this (seconds), counts as killed
STALE_RUN_SECONDS = 24 * 3600.0


class WorkspaceError(ValueError):
    """A workspace folder, its manifest or a case is unusable; the message names the file or case."""


class WorkspaceWriteError(WorkspaceError, OSError):
    """A file of the workspace could not be written (read-only folder, full disk); says so in words.

    Its ``errno`` is the failed write's (so a face can phrase its own advice), its text the sentence.
    """

    @classmethod
    def of(cls, path: Path, exc: OSError) -> WorkspaceWriteError:
        """The error for a failed write of ``path``: :func:`write_problem`'s sentence, ``exc``'s errno."""
        err = cls(write_problem(path, exc))
        err.errno = exc.errno
        return err


@dataclass
class CaseEntry:
    """One case of the workspace. Paths are relative to the workspace folder.

    ``label`` and ``mask`` are ``None`` for unlabeled cases (images kept for semi-supervised training).
    """

    name: str
    image: str
    label: str | None = None
    mask: str | None = None
    source: str | None = None
    added_at: str = ""
    updated_at: str = ""
    confirmed_fraction: float = 0.0
    #: the image's channel names, in order, for a multi-channel scan (its file is a 4D NIfTI, channels
    #: last); empty for a single-channel one
    channels: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        """Whether the case has a label map."""
        return self.label is not None

    @property
    def files(self) -> list[str]:
        """The relative paths of the case's files."""
        return [p for p in (self.image, self.label, self.mask) if p]


@dataclass
class ModelVersion:
    """One model of the workspace's history (``path`` relative to the workspace folder)."""

    version: str
    path: str
    created: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Adoption:
    """What :meth:`Workspace.adopt_version` did: the new ``version``, whether it is now ``current``, the
    version current at adoption time (``parent``), the one the run started from, and why it was not made
    current although its run asked for it (``reason``, else None)."""

    version: str
    current: bool
    parent: str | None
    started_from: str | None
    reason: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def safe_case_name(name: str) -> str:
    """A file-system safe case name: letters (any script), digits, ``-``, ``_``, ``.``; runs of other
    characters become one ``_``; at most :data:`MAX_NAME_LENGTH` characters; ``"case"`` when nothing is left.

    ``"patient 1"`` and ``"patient_1"`` both give ``"patient_1"`` (:meth:`Workspace.add_case` then suffixes
    the second); ``"患者"`` stays ``"患者"``. Names are NFC-normalised first: ``"José"`` typed on macOS
    (NFD, ``e`` + combining accent) and elsewhere (NFC, ``é``) are one case.
    """
    text = unicodedata.normalize("NFC", str(name))
    kept = "".join(ch if (ch.isalnum() or ch in "._-") else "\0" for ch in text)
    cleaned = re.sub("\0+", "_", kept).strip("._")[:MAX_NAME_LENGTH].strip("._")
    return cleaned or "case"


def _write_volume(volume: Volume, path: Path) -> None:
    write_volume(volume, path)


def _read_volume(path: Path, is_label: bool) -> Volume:
    return read_volume(path, is_label=is_label)


def inside(folder: Path, rel: str, where: Path) -> Path:
    """``folder / rel`` resolved; :class:`WorkspaceError` (naming ``where``) when it leaves ``folder``."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\\" in rel:
        raise WorkspaceError(f"{where}: path {rel!r} is not a relative path inside the workspace")
    root = folder.resolve()
    path = (root / rel).resolve()
    if path == root or not path.is_relative_to(root):
        raise WorkspaceError(f"{where}: path {rel!r} points outside the workspace folder {root}")
    return path


#: what each manifest field may hold (a newer napari-sscce may add fields: unknown keys are kept as they are)
_TOP_TYPES: dict[str, tuple[type, ...]] = {
    "format": (int,), "created": (str,), "cases": (dict,), "models": (list,), "current": (str, type(None)),
    "num_classes": (int, type(None)),
}
_CASE_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "image": (str,), "label": (str, type(None)), "mask": (str, type(None)),
    "source": (str, type(None)), "added_at": (str,), "updated_at": (str,), "confirmed_fraction": (int, float),
    "channels": (list,),
}
_MODEL_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,), "path": (str,), "created": (str,), "info": (dict,), "metrics": (dict,),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list",
               type(None): "null"}


def _check_types(data: dict[str, Any], types: dict[str, tuple[type, ...]], path: Path, where: str) -> None:
    """A :class:`WorkspaceError` naming the file, the place and the field whose value has the wrong type."""
    for key, allowed in types.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, allowed):
            wanted = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise WorkspaceError(f"{path}: {where}'{key}' must be {wanted}, not {type(value).__name__} "
                                 f"({json.dumps(value, default=str)[:60]}); nothing was changed")


def _check_manifest(data: Any, path: Path) -> dict[str, Any]:
    """Format version, structure, type and path checks of a manifest read from ``path``."""
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise WorkspaceError(f"{path}: not a napari-sscce workspace manifest (no 'cases')")
    _check_types(data, _TOP_TYPES, path, "")
    fmt = data.get("format", FORMAT_VERSION)
    if fmt > FORMAT_VERSION or fmt < 1:
        raise WorkspaceError(
            f"{path}: manifest format {fmt} was written by a newer napari-sscce (this one reads format "
            f"{FORMAT_VERSION}); upgrade napari-sscce to open this workspace; nothing was changed"
        )
    data.setdefault("models", [])
    data.setdefault("current", None)
    folder = path.parent
    for name, entry in data["cases"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise WorkspaceError(f"{path}: case {name!r} has no image path")
        _check_types(entry, _CASE_TYPES, path, f"case {name!r}: ")
        for key in ("image", "label", "mask"):
            if entry.get(key) is not None:
                inside(folder, entry[key], path)
    for i, version in enumerate(data["models"]):
        if not isinstance(version, dict) or "version" not in version:
            raise WorkspaceError(f"{path}: model entry {i + 1} has no version")
        _check_types(version, _MODEL_TYPES, path, f"model entry {i + 1}: ")
        inside(folder, version.get("path"), path)
    listed = {v["version"] for v in data["models"]}
    if data["current"] is not None and data["current"] not in listed:
        raise WorkspaceError(f"{path}: current model {data['current']!r} is not one of the listed versions "
                             f"{sorted(listed)}; nothing was changed")
    return data


def _known(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` with only the fields ``cls`` knows (a newer version's extra keys stay in the file)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The checked manifest of a workspace folder, or ``None`` when it has none (no lock taken)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise WorkspaceError(f"{path}: cannot read the workspace manifest ({problem})") from None
    return _check_manifest(data, path)


def manifest_cases(folder: str | os.PathLike) -> list[CaseEntry] | None:
    """The cases a workspace manifest names (``None`` without a manifest); paths checked to stay inside."""
    data = read_manifest(folder)
    if data is None:
        return None
    return [_known(CaseEntry, entry) for entry in data["cases"].values()]


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` into a :class:`WorkspaceError` saying why in words (read-only folder,
    full disk) instead of raw ``Errno`` text."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise WorkspaceWriteError.of(path, exc) from None

