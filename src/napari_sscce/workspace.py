"""The labeled set a person builds while correcting segmentations, and the model versions trained on it.

Layout on disk (see ``docs/contracts.md``)::

    workspace/
      manifest.json                  # cases, model versions, current version: the only commit point
      manifest.lock                  # cross-process lock (``filelock``) of every manifest change
      images/<case>__<uid>.nii.gz    # one set of files per case *version* (new names at every update)
      labels/<case>__<uid>.nii.gz
      masks/<case>__<uid>.nii.gz     # 1 where a person confirmed the label
      splits.json                    # written by :meth:`Workspace.dataset_folder`
      models/v0001/model.safetensors
      runs/<time>-<uid>/             # one fine-tune each (marker .sscce-run.json)
      quarantine/<time>/             # files the manifest no longer names (never deleted)

Safety rules:

* **One writer at a time.** Every read-modify-write of the manifest holds ``manifest.lock`` (a
  ``filelock.FileLock``, across processes), re-reads the manifest inside the lock and allocates case names
  and version numbers there. A model version folder is created with ``exist_ok=False``: never overwritten.
* **The manifest switch is the only commit point.** A case version is written under new file names
  (``<case>__<uid>``); until the manifest names them they are orphans. A crash at any point leaves either the
  old case or the new one, never a mix. The files an update replaced are deleted after the commit.
* **Opening tidies, and deletes only what it owns** (issue 24, :mod:`napari_sscce.workspace_files`).
  Under the lock it deletes the :mod:`napari_sscce.atomic` temporaries of its own files that are older than
  the last manifest commit, and moves to ``quarantine/<time>/`` (recoverable, never deleted) the orphans a
  crash left: files named ``<case>__<8 hex>.<ext>`` in ``images/``, ``labels/``, ``masks/`` that the
  manifest does not name, and ``models/vNNNN/`` folders it does not list that hold only a model file.
  Nothing is moved or deleted while ``manifest.json`` is missing or names no case, through a symlinked
  folder or file, or outside the resolved workspace folder; what was left alone is in
  :attr:`Workspace.notes`.
* **Run folders are cleaned when a run ends.** :meth:`Workspace.finish_run` (called by the fine-tune at its
  end) deletes a run's checkpoints and training state (the version keeps its own copy), keeps its small logs
  and the data view a registered version was trained on (later fine-tunes replay it), and applies the size
  bound (:meth:`Workspace.prune_runs`: :data:`KEEP_RUNS` folders, :data:`MAX_RUN_BYTES`). Opening cleans the
  folders of killed runs (process gone, lock free). Only folders with our marker are touched, and in them
  only the files napari-sscce writes.
* **Paths stay inside.** Every manifest path is resolved and must lie inside the workspace folder
  (:class:`WorkspaceError` otherwise), so a doctored manifest cannot make :meth:`Workspace.remove_case`
  delete files elsewhere.
* **Nothing is changed silently on the way in.** :meth:`Workspace.add_case` refuses labels that are not
  finite, integer-valued classes of the workspace, images with NaN / Inf, and labels or masks whose shape or
  spacing differ from the image's; names that clean to an existing case get a suffix (``patient_1-2``)
  unless ``update=True`` asks to replace that case.

Training on a workspace uses the manifest (``io.datasets.open_dataset`` recognises ``manifest.json``), not a
listing of the folders. Nothing here imports Qt; the fine-tune widget and the tests use it headless.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from napari_sscce.atomic import TEMP_MARKER, atomic_path, atomic_write_json, crash_point
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.readers import read_volume
from napari_sscce.io.validate import check_same_grid, reorient_like
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume
from napari_sscce.workspace_files import (
    CASE_FILE,
    HEAVY_FILES,
    RUN_MARKER,
    RUN_MODEL,
    RUN_VIEW,
    TRAIN_FILES,
    VERSION_DIR,
    Quarantine,
    lock_held,
    our_temporary,
    owned_file,
    owned_folder,
    pid_alive,
    remove_tree,
    size_of,
    write_problem,
)

__all__ = ["Adoption", "CaseEntry", "ModelVersion", "Workspace", "WorkspaceError", "WorkspaceWriteError",
           "manifest_cases", "safe_case_name"]

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
    """A file of the workspace could not be written (read-only folder, full disk); says so in words."""


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


class Workspace:
    """A folder holding a growing labeled set and the models fine-tuned on it.

    Parameters
    ----------
    folder : path-like
        The workspace folder; created (with an empty manifest) when it does not exist.
    cleanup : bool
        Remove the temporaries and orphans a crash left (under the lock; default True).

    Raises
    ------
    WorkspaceError
        When ``manifest.json`` exists but is not a workspace manifest, names a path outside the folder,
        or the lock cannot be had within :data:`LOCK_TIMEOUT` seconds.
    """

    def __init__(self, folder: str | Path, cleanup: bool = True):
        self.folder = Path(folder).expanduser()
        with _writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.folder / LOCK), timeout=LOCK_TIMEOUT)
        self.cleaned: dict[str, int] = {"temporaries": 0, "orphans": 0, "bytes": 0}
        #: what opening found and left alone (symlinked folders, files without a manifest, ...), as sentences
        self.notes: list[str] = []
        #: the quarantine folder that opening moved unreferenced files to, if any
        self.quarantined: Path | None = None
        #: bytes of finished or killed run folders freed by opening (:meth:`prune_runs`)
        self.runs_freed = 0
        #: the folder cannot be written (a read-only disk or folder): it opens for reading, nothing is cleaned
        self.read_only = not os.access(self.folder, os.W_OK)
        if self.read_only:
            self._manifest = self._load()
            self.notes.append(f"{self.folder}: the folder is read-only; opened for reading, nothing cleaned")
        elif cleanup:
            with self._locked() as manifest:
                self.cleaned = self._cleanup(manifest, self.manifest_path.is_file())
        else:
            self._manifest = self._load()

    # ------------------------------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        """Path of ``manifest.json``."""
        return self.folder / MANIFEST

    def _load(self) -> dict[str, Any]:
        data = read_manifest(self.folder)
        if data is None:
            return {"format": FORMAT_VERSION, "created": _now(), "cases": {}, "models": [], "current": None}
        return data

    def _save(self, manifest: dict[str, Any]) -> None:
        with _writing(self.manifest_path):
            atomic_write_json(self.manifest_path, manifest)
        self._manifest = manifest

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the cross-process lock; yields the manifest re-read inside it (a private copy)."""
        try:
            self._lock.acquire()
        except Timeout:
            raise WorkspaceError(
                f"{self.folder / LOCK}: another process has held the workspace lock for over "
                f"{LOCK_TIMEOUT:.0f} s; is another napari or script writing to this workspace?"
            ) from None
        except OSError as exc:
            raise WorkspaceWriteError(write_problem(self.folder / LOCK, exc)) from None
        try:
            self._manifest = self._load()
            yield json.loads(json.dumps(self._manifest))
        finally:
            self._lock.release()

    def reload(self) -> None:
        """Read the manifest again (another process may have changed it)."""
        self._manifest = self._load()

    def _path(self, rel: str) -> Path:
        return inside(self.folder, rel, self.manifest_path)

    def _delete(self, rel: str) -> None:
        """Delete the case file ``rel`` when it is a regular file in a real folder of the workspace (never
        through a symlink: the link's target may be another workspace's); otherwise leave it, noted."""
        self._path(rel)
        root = self.folder.resolve()
        parts = Path(rel).parts
        folder = owned_folder(root, parts[0]) if len(parts) == 2 else None
        path = root / rel
        if folder is not None and owned_file(path, folder):
            path.unlink(missing_ok=True)
        elif path.is_symlink() or path.exists():
            self.notes.append(f"{path}: not deleted (a symlink, or not in a real folder of this workspace)")

    # ------------------------------------------------------------------------------------------ cleanup
    def _cleanup(self, manifest: dict[str, Any], found: bool) -> dict[str, int]:
        """Tidy crash leftovers (lock held): delete our stale temporaries, quarantine unreferenced case files
        and version folders. ``found``: whether ``manifest.json`` exists. Nothing is deleted or moved through
        a symlink, outside the resolved workspace folder, or while the manifest is missing or names no case
        (a sync tool or a partial copy must not cost a person their files); what was left is in
        :attr:`notes`."""
        root = self.folder.resolve()
        commit = self.manifest_path.stat().st_mtime if found else None
        temps, size = self._remove_temporaries(root, commit)
        quarantine = Quarantine(root)
        orphans = 0
        referenced = {self._path(p) for e in manifest["cases"].values()
                      for p in (e.get("image"), e.get("label"), e.get("mask")) if p}
        for sub in CASE_FOLDERS:
            folder = self._owned(root, sub)
            if folder is None:
                continue
            candidates = [p for p in folder.iterdir() if _CASE_FILE.match(p.name) and owned_file(p, folder)
                          and p not in referenced]
            if candidates and not (found and manifest["cases"]):
                self.notes.append(self._unmanaged(folder, len(candidates), "case files", found))
                continue
            for path in candidates:
                n = size_of(path)
                if quarantine.move(path, sub):
                    orphans, size = orphans + 1, size + n
        n, b = self._quarantine_versions(root, manifest, found, quarantine)
        self.quarantined = quarantine.folder
        if quarantine.moved:
            self.notes.append(f"{len(quarantine.moved)} file(s) or folder(s) the manifest does not name were "
                              f"moved to {quarantine.folder} (recoverable; never deleted by napari-sscce)")
        self.notes.extend(quarantine.problems)
        self.runs_freed = self._prune_runs(manifest)
        return {"temporaries": temps, "orphans": orphans + n, "bytes": size + b}

    def _owned(self, root: Path, sub: str) -> Path | None:
        """``root / sub`` when it is a real folder of the workspace; notes a symlinked one."""
        folder = owned_folder(root, sub)
        if folder is None and (root / sub).is_symlink():
            self.notes.append(f"{root / sub} is a symlink (to {(root / sub).resolve()}): nothing in it is "
                              "cleaned up, it may belong to another workspace")
        return folder

    def _unmanaged(self, folder: Path, count: int, what: str, found: bool) -> str:
        why = "there is no manifest.json" if not found else f"{self.manifest_path} names none"
        return (f"{folder}: {count} {what} kept although {why} (a partial copy or a sync tool?); nothing was "
                "deleted or moved: restore the manifest, or add the cases again")

    def _remove_temporaries(self, root: Path, commit: float | None) -> tuple[int, int]:
        """Delete our atomic-write temporaries older than the last manifest commit (none without one)."""
        if commit is None:
            return 0, 0
        places = [(root, "root")] + [(f, "case") for f in map(lambda s: owned_folder(root, s), CASE_FOLDERS)
                                     if f is not None]
        models = owned_folder(root, "models")
        if models is not None:
            places.append((models, "model"))
            places += [(v, "model") for v in models.iterdir() if _VERSION_DIR.match(v.name)
                       and owned_folder(models, v.name) is not None]
        count = size = 0
        for folder, kind in places:
            for path in folder.glob(f".*{TEMP_MARKER}*"):
                if not (our_temporary(path.name, kind) and owned_file(path, folder)):
                    continue
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    if stat.st_mtime < commit:
                        path.unlink()
                        count, size = count + 1, size + stat.st_size
        return count, size

    def _quarantine_versions(
        self, root: Path, manifest: dict[str, Any], found: bool, quarantine: Quarantine
    ) -> tuple[int, int]:
        """Quarantine ``models/vNNNN/`` folders the manifest does not list that hold only model files."""
        models = self._owned(root, "models")
        if models is None:
            return 0, 0
        listed = {v["version"] for v in manifest["models"]}
        candidates = []
        for folder in models.iterdir():
            if not (_VERSION_DIR.match(folder.name) and folder.name not in listed
                    and owned_folder(models, folder.name) is not None):
                continue
            files = list(folder.iterdir())
            if not files:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # an empty folder a crash left between mkdir and the commit
            elif all(f.name.startswith("model.") and owned_file(f, folder) for f in files):
                candidates.append(folder)
        if candidates and not (found and (manifest["models"] or manifest["cases"])):
            self.notes.append(self._unmanaged(models, len(candidates), "model version folders", found))
            return 0, 0
        count = size = 0
        for folder in candidates:
            n = size_of(folder)
            if quarantine.move(folder, "models"):
                count, size = count + 1, size + n
        return count, size

    # --------------------------------------------------------------------------------------------- cases
    @property
    def cases(self) -> list[CaseEntry]:
        """All cases, labeled and unlabeled, in the order they were first added."""
        return [_known(CaseEntry, entry) for entry in self._manifest["cases"].values()]

    @property
    def labeled_cases(self) -> list[CaseEntry]:
        """The cases with a label map."""
        return [c for c in self.cases if c.labeled]

    @property
    def num_classes(self) -> int | None:
        """The number of classes recorded for this workspace (from its models or :meth:`set_num_classes`)."""
        value = self._manifest.get("num_classes")
        return int(value) if value else None

    def set_num_classes(self, num_classes: int) -> None:
        """Record the number of classes the labels of this workspace must fit (labels 0..num_classes-1)."""
        if int(num_classes) < 2:
            raise WorkspaceError(f"{self.folder}: a workspace needs at least 2 classes, got {num_classes}")
        with self._locked() as manifest:
            manifest["num_classes"] = int(num_classes)
            self._save(manifest)

    @property
    def class_names(self) -> list[str] | None:
        """The class names a person confirmed (background first; :meth:`confirm_classes`), or ``None``."""
        names = self._manifest.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) and len(names) >= 2 else None

    def confirm_classes(self, names: list[str]) -> None:
        """Record the classes a person confirmed: their names (background first) fix the class count.

        Labels added later must be ``0..len(names)-1`` (:meth:`add_case`); labels already stored must fit.
        """
        names = [str(n).strip() for n in names]
        if len(names) < 2 or not all(names) or len({n.lower() for n in names}) != len(names):
            raise WorkspaceError(
                f"{self.folder}: give at least two different, non-empty class names, background first "
                f"(got {', '.join(map(repr, names)) or 'none'})"
            )
        with self._locked() as manifest:
            for entry in manifest["cases"].values():
                if entry.get("label"):
                    top = int(np.max(np.asarray(_read_volume(self._path(entry["label"]), True).array)))
                    if top >= len(names):
                        raise WorkspaceError(
                            f"{self.folder}: case {entry['name']!r} has label {top}, but only {len(names)} "
                            f"classes were named ({', '.join(names)}): name every class its labels use"
                        )
            manifest["class_names"] = names
            manifest["num_classes"] = len(names)
            self._save(manifest)

    def case(self, name: str) -> CaseEntry:
        """The entry of case ``name`` (``KeyError`` naming it when absent; NFD and NFC spellings are one)."""
        key = _case_key(self._manifest["cases"], name)
        if key is None:
            raise KeyError(f"no case {name!r} in workspace {self.folder}")
        return _known(CaseEntry, self._manifest["cases"][key])

    def _update_name(self, name: str | None, image: Volume, update: bool) -> str:
        """The cleaned case name; with ``update`` refused unless it is the name asked for (NFC aside):
        ``update=True`` under ``"patient 1"`` must not replace case ``"patient_1"``, maybe another patient."""
        requested = unicodedata.normalize("NFC", str(name or image.name))
        wanted = safe_case_name(requested)
        if update and wanted != requested:
            raise WorkspaceError(
                f"workspace {self.folder}: update of case {requested!r} refused: its file-safe name is "
                f"{wanted!r}, which may be another case; update by the stored case name (e.g. {wanted!r}) "
                "or add it as a new case"
            )
        return _case_key(self._manifest["cases"], wanted) or wanted if update else wanted

    def add_case(
        self,
        image: Volume,
        labels: Volume | None,
        mask: Volume | None = None,
        name: str | None = None,
        *,
        update: bool = False,
        num_classes: int | None = None,
        reorient: bool = False,
    ) -> str:
        """Add a case (or, with ``update=True``, replace one): image, corrected labels and annotation mask.

        Parameters
        ----------
        image : Volume
            The scan (3D, finite values).
        labels : Volume or None
            The corrected label map on the image's grid (same shape and spacing; finite integer values
            0..classes-1); ``None`` adds an unlabeled case.
        mask : Volume, optional
            1 where a person confirmed the label, 0 elsewhere. ``None`` with ``labels`` means the whole
            label map was checked (all ones).
        name : str, optional
            Case name; defaults to ``image.name``; cleaned with :func:`safe_case_name`.
        update : bool
            Replace the case of that (cleaned) name, keeping its ``added_at``. Without it a name that is
            taken gets a suffix (``"patient_1"`` -> ``"patient_1-2"``): a case is never replaced silently.
        num_classes : int, optional
            Allowed classes (labels 0..num_classes-1); default the workspace's recorded classes, else 0..255.
        reorient : bool
            Put labels / mask that lie on the image's world grid with axes flipped or permuted onto the
            image's voxel grid (an exact reordering, :func:`napari_sscce.io.validate.reorient_like`). Without
            it such labels are refused: a mirrored label must never be stored as if it were on the image.

        Returns
        -------
        str
            The case name used (cleaned, maybe suffixed).

        Raises
        ------
        WorkspaceError
            Naming the case and the problem: not 3D, NaN / Inf in the image, labels not integer, negative,
            NaN or beyond the classes, labels or mask on another grid (shape, spacing, or an affine
            mirrored, permuted or shifted in the world).
        """
        wanted = self._update_name(name, image, update)
        classes = num_classes or self.num_classes
        if reorient:
            labels, mask = (_reoriented(wanted, v, image) for v in (labels, mask))
        label_arr, mask_arr = _validated(wanted, image, labels, mask, classes)
        with self._locked() as manifest:
            final = (_case_key(manifest["cases"], wanted) or wanted) if update \
                else _unique_name(wanted, manifest["cases"])
            old = manifest["cases"].get(final) or {}
            uid = uuid.uuid4().hex[:8]
            self._refuse_shared_files(manifest, final, _planned_files(final, uid, label_arr is not None))
            files = self._write_case_files(final, image, label_arr, mask_arr, uid)
            now = _now()
            entry = CaseEntry(
                name=final,
                image=files["image"],
                label=files.get("label"),
                mask=files.get("mask"),
                source=str(image.source) if image.source else old.get("source"),
                added_at=old.get("added_at", now),
                updated_at=now,
                confirmed_fraction=float(mask_arr.mean()) if mask_arr is not None and mask_arr.size else 0.0,
            )
            manifest["cases"][final] = {**old, **asdict(entry)}  # keys of a newer version kept
            self._save(manifest)  # the commit point
            crash_point("workspace.committed")
            self._remove_replaced(old, entry)
        return final

    def _write_case_files(
        self, name: str, image: Volume, label_arr: np.ndarray | None, mask_arr: np.ndarray | None, uid: str
    ) -> dict[str, str]:
        """Write a case version under new names; returns role -> relative path (nothing committed)."""
        volumes = {"image": image}
        if label_arr is not None:
            volumes["label"] = image.with_array(label_arr, is_label=True)
            volumes["mask"] = image.with_array(mask_arr, is_label=True)
        planned = _planned_files(name, uid, label_arr is not None)
        files = {}
        written: list[Path] = []
        try:
            for role, volume in volumes.items():
                rel = planned[role]
                with _writing(self.folder / rel):
                    _write_volume(volume, self.folder / rel)
                written.append(self.folder / rel)
                files[role] = rel
        except BaseException:
            for path in written:  # not committed: nothing refers to them
                path.unlink(missing_ok=True)
            raise
        return files

    def _refuse_shared_files(self, manifest: dict[str, Any], name: str, files: dict[str, str]) -> None:
        """Refuse, before anything is written, when a file about to be written is another case's file
        (e.g. on a case-insensitive disk): a case never overwrites another patient's files."""
        root = self.folder.resolve()
        new = {str((root / rel).resolve()).casefold(): rel for rel in files.values()}
        for other, entry in manifest["cases"].items():
            if other == name:
                continue
            for rel in (entry.get("image"), entry.get("label"), entry.get("mask")):
                if rel and str(self._path(rel)).casefold() in new:
                    raise WorkspaceError(
                        f"workspace {self.folder}: case {name!r} would write {rel!r}, a file of case "
                        f"{other!r}; refused (nothing was changed)"
                    )

    def _remove_replaced(self, old: dict[str, Any], new: CaseEntry) -> None:
        """Delete the files of the replaced case version (after the commit)."""
        keep = set(new.files)
        for key in ("image", "label", "mask"):
            rel = old.get(key)
            if rel and rel not in keep:
                self._delete(rel)
                crash_point("workspace.old_removed")

    def add_unlabeled(self, image: Volume, name: str | None = None, *, update: bool = False) -> str:
        """Add an image without labels (used as unlabeled data by semi-supervised fine-tuning).

        With ``update=True`` the case of that name is replaced; if it is labeled it keeps its labels and
        mask (only its image is rewritten). Without it a taken name gets a suffix.
        """
        wanted = self._update_name(name, image, update)
        existing = self._manifest["cases"].get(wanted) if update else None
        if existing and existing.get("label"):
            labels = _read_volume(self._path(existing["label"]), True)
            mask = _read_volume(self._path(existing["mask"]), True) if existing.get("mask") else None
            return self.add_case(image, labels, mask, name=wanted, update=True)
        return self.add_case(image, None, None, name=wanted, update=update)

    def load_case(self, name: str) -> tuple[Volume, Volume | None, Volume | None]:
        """Read a case back: ``(image, labels or None, mask or None)``."""
        entry = self.case(name)
        image = _read_volume(self._path(entry.image), False)
        labels = _read_volume(self._path(entry.label), True) if entry.label else None
        mask = _read_volume(self._path(entry.mask), True) if entry.mask else None
        return image, labels, mask

    def remove_case(self, name: str) -> None:
        """Remove a case from the manifest, then delete its files (paths checked to stay inside)."""
        with self._locked() as manifest:
            key = _case_key(manifest["cases"], name)
            if key is None:
                raise KeyError(f"no case {name!r} in workspace {self.folder}")
            name = key
            entry = _known(CaseEntry, manifest["cases"][name])
            for rel in entry.files:  # raises before anything is changed
                self._path(rel)
            del manifest["cases"][name]
            self._save(manifest)
            for rel in entry.files:
                self._delete(rel)

    def dataset_folder(self, val_cases: list[str] | None = None) -> Path:
        """Write ``splits.json`` and return the folder for ``io.datasets.open_dataset`` / the training loop.

        Splits: ``labeled`` = the labeled cases not in ``val_cases``, ``unlabeled`` = the cases without
        labels, ``val`` = ``val_cases`` (default none: while a person builds the set, every corrected case is
        worth more as training data; the training loop then keeps its last model). The dataset's cases and
        files come from the manifest (``open_dataset`` reads it), not from a listing of the folders.

        Returns
        -------
        pathlib.Path
            The workspace folder (it holds ``manifest.json`` and ``splits.json``).
        """
        with self._locked() as manifest:
            cases = manifest["cases"]
            val = [safe_case_name(v) for v in (val_cases or [])]
            for v in val:
                if v not in cases or not cases[v].get("label"):
                    raise KeyError(f"validation case {v!r} is not a labeled case of workspace {self.folder}")
            splits = {
                "labeled": [n for n, e in cases.items() if e.get("label") and n not in val],
                "unlabeled": [n for n, e in cases.items() if not e.get("label")],
                "val": val,
            }
            atomic_write_json(self.folder / SPLITS, splits)
        return self.folder

    # ------------------------------------------------------------------------------------ model versions
    @property
    def versions(self) -> list[ModelVersion]:
        """Every model version, oldest first."""
        return [_known(ModelVersion, v) for v in self._manifest["models"]]

    @property
    def current_version(self) -> str | None:
        """The version in use (``None`` before the first model was added)."""
        return self._manifest.get("current")

    @property
    def current_model_path(self) -> Path | None:
        """Absolute path of the current model's checkpoint, or ``None``."""
        current = self.current_version
        for v in self.versions:
            if v.version == current:
                return self.folder / v.path
        return None

    def version_path(self, version: str) -> Path:
        """Absolute checkpoint path of ``version`` (``KeyError`` when unknown)."""
        for v in self.versions:
            if v.version == version:
                self._path(v.path)
                return self.folder / v.path
        raise KeyError(f"no model version {version!r} in workspace {self.folder}")

    def add_model_version(
        self,
        checkpoint_path: str | Path,
        info: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        make_current: bool = True,
    ) -> str:
        """Copy a checkpoint into a new ``models/vNNNN/`` and record it; older versions are kept.

        The version number is allocated under the lock (one more than any listed version or existing
        folder) and its folder created with ``exist_ok=False``: concurrent callers get different versions
        and no model file is ever overwritten. The workspace records the model's number of classes when
        the checkpoint metadata has it (it then bounds the labels :meth:`add_case` accepts).

        Parameters
        ----------
        checkpoint_path : path-like
            The checkpoint file (safetensors with metadata, from ``models.checkpoint.save_checkpoint``).
        info : dict, optional
            Free-form JSON-able description (method, iterations, parent version ...).
        metrics : dict, optional
            Validation numbers of this model.
        make_current : bool
            Make the new version the current one.

        Returns
        -------
        str
            The new version name, e.g. ``"v0003"``.
        """
        return self._register(checkpoint_path, info, metrics, lambda manifest: (make_current, {}))

    def adopt_version(
        self,
        checkpoint_path: str | Path,
        info: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        *,
        started_from: str | None,
        adopt: bool = True,
    ) -> Adoption:
        """Register a fine-tuned model and, if it is to be adopted, make it current, in one step under the
        workspace lock with the manifest re-read inside it (concurrent fine-tunes serialise here).

        The record names the true parent (``parent``: the version current at adoption time) and the one
        the run started from (``started_from``). When another fine-tune made a different version current
        while this one ran, this model was compared against a model that is no longer in use: it is kept
        as a version but not made current, and :attr:`Adoption.reason` says so.

        Parameters
        ----------
        checkpoint_path : path-like
            The fine-tuned checkpoint.
        info, metrics : dict, optional
            As for :meth:`add_model_version`.
        started_from : str or None
            The version the run started from (None for a cold start).
        adopt : bool
            Whether the run's own check found the new model good enough to use.
        """
        outcome: dict[str, Any] = {}

        def decide(manifest: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            current = manifest.get("current")
            moved = started_from is not None and current != started_from
            outcome.update(parent=current, moved=moved)
            extra = {"parent": current, "started_from": started_from}
            if adopt and moved:
                extra["not_adopted"] = f"{current} became current while the run compared to {started_from}"
            outcome["current"] = adopt and not moved
            return outcome["current"], extra

        version = self._register(checkpoint_path, info, metrics, decide)
        made_current = bool(outcome["current"])
        reason = None
        if adopt and not made_current:
            reason = (f"new model {version} is kept as a version but not used: {outcome['parent']} was made "
                      f"current by another fine-tune while this one ran (it was compared against "
                      f"{started_from}); compare them, or choose {version} under model version to use it")
        return Adoption(version, made_current, outcome.get("parent"), started_from, reason)

    def _register(self, checkpoint_path: str | Path, info: dict[str, Any] | None,
                  metrics: dict[str, Any] | None, decide) -> str:
        """Copy a checkpoint into a new version folder and record it; ``decide(manifest)`` (called with the
        lock held, on the manifest re-read inside it) gives ``(make_current, extra info)``."""
        src = Path(checkpoint_path)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: checkpoint file not found")
        classes = _checkpoint_classes(src)
        with self._locked() as manifest:
            make_current, extra = decide(manifest)
            version, folder = self._new_version_folder(manifest)
            rel = f"models/{version}/model{''.join(src.suffixes) or '.safetensors'}"
            with _writing(self.folder / rel), atomic_path(self.folder / rel) as tmp:
                shutil.copyfile(src, tmp)
            entry = ModelVersion(
                version=version,
                path=rel,
                created=_now(),
                info={"source": str(src), "parent": manifest.get("current"), **(info or {}), **extra},
                metrics=dict(metrics or {}),
            )
            manifest["models"].append(json.loads(json.dumps(asdict(entry), default=str)))
            if make_current:
                manifest["current"] = version
            if classes and not manifest.get("num_classes"):
                manifest["num_classes"] = classes
            self._save(manifest)
            crash_point("workspace.committed")
        return version

    def _new_version_folder(self, manifest: dict[str, Any]) -> tuple[str, Path]:
        """The next free version and its freshly created folder (call with the lock held)."""
        numbers = [int(v["version"].lstrip("v")) for v in manifest["models"]
                   if str(v["version"]).lstrip("v").isdigit()]
        models = self.folder / "models"
        if models.is_dir():
            numbers += [int(p.name[1:]) for p in models.iterdir() if _VERSION_DIR.match(p.name)]
        number = max(numbers, default=0) + 1
        while True:
            version = f"v{number:04d}"
            folder = models / version
            try:
                folder.mkdir(parents=True, exist_ok=False)
                return version, folder
            except FileExistsError:
                number += 1

    def revert(self, version: str) -> Path:
        """Make ``version`` the current model again (newer versions stay on disk); returns its path."""
        with self._locked() as manifest:
            path = self.version_path(version)
            manifest["current"] = version
            self._save(manifest)
        return path

    # ------------------------------------------------------------------------------------------ run folders
    def new_run_folder(self) -> Path:
        """A fresh ``runs/<time>-<uid>/`` for a fine-tune, with the marker (:data:`RUN_MARKER`) that proves
        the folder is the workspace's own (only such folders are ever cleaned by :meth:`finish_run` and
        :meth:`prune_runs`)."""
        runs = self.folder / RUNS  # a symlinked runs/ (another disk) works, but is never cleaned
        with _writing(runs):
            runs.mkdir(exist_ok=True)
            run = runs / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            run.mkdir(exist_ok=False)
            marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                      "state": "running", "workspace": str(self.folder.resolve())}
            atomic_write_json(run / RUN_MARKER, marker)
        return run

    def finish_run(self, run: str | Path, version: str | None = None) -> int:
        """After a fine-tune was adopted, rejected or cancelled: delete the run's large files (checkpoints,
        training state, the data view; a registered version holds its own copy under ``models/``), keep its
        small logs, then apply the size bound (:meth:`prune_runs`).

        Only a run folder made by :meth:`new_run_folder` (its marker names this workspace) is touched; files
        a version's record points to and files napari-sscce does not write are kept. Returns bytes freed.
        """
        with self._locked() as manifest:
            folder = self._own_run(Path(run))
            if folder is None:
                return 0
            freed = self._clean_run(folder, manifest, heavy_only=True)
            self._mark_run(folder, "finished", version)
            return freed + self._prune_runs(manifest)

    def prune_runs(self, keep: int | None = None, max_bytes: int | None = None,
                   stale_after: float | None = None) -> int:
        """Apply the size bound to ``runs/``: keep the newest ``keep`` finished run folders within
        ``max_bytes``, clean the folders of killed runs (no live process, lock free, older than
        ``stale_after`` seconds on another machine). Defaults :data:`KEEP_RUNS`, :data:`MAX_RUN_BYTES`,
        :data:`STALE_RUN_SECONDS`; also done at every open. Only folders with our marker are touched.
        Returns the bytes freed."""
        with self._locked() as manifest:
            return self._prune_runs(manifest, keep, max_bytes, stale_after)

    def _own_run(self, run: Path) -> Path | None:
        """The resolved run folder when it is ours: a real folder directly in a real ``runs/`` with our
        marker naming this workspace; else None."""
        root = self.folder.resolve()
        runs = owned_folder(root, RUNS)
        if runs is None or run.is_symlink():
            return None
        folder = owned_folder(runs, run.name)
        if folder is None or run.resolve() != folder:
            return None
        marker = _read_marker(folder)
        return folder if marker and marker.get("workspace") == str(root) else None

    def _needed(self, manifest: dict[str, Any]) -> set[Path]:
        """Resolved paths a version record needs (its model file, a replay data folder's files)."""
        needed: set[Path] = set()
        for v in manifest["models"]:
            with contextlib.suppress(WorkspaceError, OSError):
                needed.add(self._path(v["path"]))
            info = v.get("info") or {}
            replay = info.get("replay")
            folders = [replay.get("data")] if isinstance(replay, dict) else []
            if isinstance(info.get("run"), str):  # the data view the version was trained on: later
                folders.append(str(Path(info["run"]) / RUN_VIEW))  # fine-tunes replay it (config.data)
            runs = self.folder.resolve() / RUNS
            for data in folders:
                with contextlib.suppress(OSError, TypeError, ValueError):
                    base = Path(data).resolve()
                    if base.is_relative_to(runs) and base != runs and base.is_dir():  # only ours matter
                        needed.update(p.resolve() for p in base.rglob("*") if p.is_file())
                        needed.update(p for p in base.rglob("*") if p.is_symlink())
        return needed

    def _clean_run(self, folder: Path, manifest: dict[str, Any], heavy_only: bool) -> int:
        """Delete our files of a run folder (never a version's needs nor files we do not write)."""
        keep = self._needed(manifest)
        freed = 0
        view = owned_folder(folder, RUN_VIEW)
        if view is not None:
            freed += remove_tree(view, keep)
        model = owned_folder(folder, RUN_MODEL)
        names = HEAVY_FILES if heavy_only else TRAIN_FILES
        for sub in [f for f in (model, folder) if f is not None]:
            for path in sub.iterdir():
                ours = path.name in names or our_temporary(path.name, "model") or (
                    path.name.startswith(".") and TEMP_MARKER in path.name and
                    path.name[1:path.name.index(TEMP_MARKER)] in names)
                if ours and owned_file(path, sub) and path not in keep:
                    with contextlib.suppress(OSError):
                        size = path.stat().st_size
                        path.unlink()
                        freed += size
        if not heavy_only:
            (folder / RUN_MARKER).unlink(missing_ok=True)
            for sub in (model, folder):
                with contextlib.suppress(OSError):
                    if sub is not None:
                        sub.rmdir()  # only when nothing a person put there is left
        return freed

    def _mark_run(self, folder: Path, state: str, version: str | None = None) -> None:
        marker = _read_marker(folder) or {}
        marker.update(state=state, finished=time.time(), version=version)
        with contextlib.suppress(OSError):
            atomic_write_json(folder / RUN_MARKER, marker)

    def _prune_runs(self, manifest: dict[str, Any], keep: int | None = None, max_bytes: int | None = None,
                    stale_after: float | None = None) -> int:
        """:meth:`prune_runs` with the lock held."""
        keep = KEEP_RUNS if keep is None else int(keep)
        max_bytes = MAX_RUN_BYTES if max_bytes is None else int(max_bytes)
        stale_after = STALE_RUN_SECONDS if stale_after is None else float(stale_after)
        runs = owned_folder(self.folder.resolve(), RUNS)
        if runs is None:
            return 0
        freed, done = 0, []
        for child in runs.iterdir():
            folder = self._own_run(child)
            marker = _read_marker(folder) if folder is not None else None
            if folder is None or marker is None:
                continue  # not provably ours: a person's folder, an older run without a marker
            if marker.get("state") == "running":
                if _run_alive(folder, marker, stale_after):
                    continue
                freed += self._clean_run(folder, manifest, heavy_only=True)  # a killed run
                self._mark_run(folder, "killed")
                marker = _read_marker(folder) or marker
            done.append((float(marker.get("started") or 0), folder))
        total = 0
        for i, (_, folder) in enumerate(sorted(done, reverse=True)):
            total += size_of(folder)
            if i >= keep or total > max_bytes:
                freed += self._clean_run(folder, manifest, heavy_only=False)
        return freed

    def __repr__(self) -> str:
        n_lab = len(self.labeled_cases)
        return (
            f"Workspace({str(self.folder)!r}: {n_lab} labeled / {len(self.cases) - n_lab} unlabeled cases, "
            f"{len(self.versions)} model versions, current {self.current_version})"
        )


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` into a :class:`WorkspaceError` saying why in words (read-only folder,
    full disk) instead of raw ``Errno`` text."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise WorkspaceWriteError(write_problem(path, exc)) from None


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The run marker of ``folder`` (a dict), or None when absent or unreadable."""
    path = folder / RUN_MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 65536:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _run_alive(folder: Path, marker: dict[str, Any], stale_after: float) -> bool:
    """Whether a run marked running may still be running: its training lock is held, its process lives
    (same machine), or it started less than ``stale_after`` seconds ago (another machine)."""
    if lock_held(folder / RUN_MODEL / ".sscce-run.lock"):
        return True
    if marker.get("host") == socket.gethostname():
        return pid_alive(marker.get("pid")) and time.time() - float(marker.get("started") or 0) < 7 * 86400
    return time.time() - float(marker.get("started") or 0) < stale_after


def _planned_files(name: str, uid: str, labeled: bool) -> dict[str, str]:
    """Role -> relative path of the files of a case version ``<case>__<uid>``."""
    roles = {"image": "images", "label": "labels", "mask": "masks"} if labeled else {"image": "images"}
    return {role: f"{folder}/{name}__{uid}{VOLUME_SUFFIX}" for role, folder in roles.items()}


def _case_key(cases: dict[str, Any], name: str) -> str | None:
    """The manifest key of case ``name``: itself, or the key with the same NFC spelling (an older manifest
    may hold NFD names), or None."""
    if name in cases:
        return name
    nfc = unicodedata.normalize("NFC", str(name))
    return next((key for key in cases if unicodedata.normalize("NFC", key) == nfc), None)


def _unique_name(name: str, taken: dict[str, Any]) -> str:
    """``name``, or ``name-2``, ``name-3`` ... whichever is free."""
    taken = {unicodedata.normalize("NFC", key): None for key in taken}
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _checkpoint_classes(path: Path) -> int | None:
    """``num_classes`` from a checkpoint's safetensors header (no torch import), or ``None`` if unreadable."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= 16 * 1024 * 1024:
                return None
            header = json.loads(fh.read(n).decode("utf-8"))
        value = json.loads(header["__metadata__"]["metadata"]).get("num_classes")
        return int(value) if value and 2 <= int(value) <= MAX_STORED_LABEL + 1 else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _reoriented(name: str, volume: Volume | None, image: Volume) -> Volume | None:
    """``volume`` on ``image``'s voxel grid when the two differ only by axis flips / permutations."""
    if volume is None or (volume.shape == image.shape and _same_spacing(volume.spacing, image.spacing)
                          and np.allclose(volume.affine, image.affine, atol=1e-6)):
        return volume
    try:
        return reorient_like(volume, image)
    except VolumeError as exc:
        raise WorkspaceError(f"case {name!r}: {exc}") from None


def _same_spacing(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return bool(np.allclose(a, b, rtol=SPACING_RTOL, atol=1e-6))


def _validated(
    name: str, image: Volume, labels: Volume | None, mask: Volume | None, classes: int | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check a case before anything is written; returns the uint8 label and mask arrays (or ``None``)."""
    def fail(problem: str) -> WorkspaceError:
        return WorkspaceError(f"case {name!r}: {problem}")

    arr = np.asarray(image.array)
    if arr.ndim != 3:
        raise fail(f"the image must be 3D (z, y, x), got shape {image.shape}")
    if not np.all(np.isfinite(image.spacing)) or min(image.spacing) <= 0:
        raise fail(f"the image spacing {image.spacing} is not positive and finite")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        raise fail(f"the image has {int(bad.sum())} NaN / Inf voxels; replace them before adding the case")
    for what, vol in (("labels", labels), ("mask", mask)):
        if vol is None:
            continue
        if vol.shape != image.shape:
            raise fail(f"{what} shape {vol.shape} differs from image shape {image.shape}")
        if not _same_spacing(vol.spacing, image.spacing):
            raise fail(f"{what} spacing {tuple(round(s, 4) for s in vol.spacing)} mm differs from image "
                       f"spacing {tuple(round(s, 4) for s in image.spacing)} mm")
        try:  # same shape and spacing, but mirrored, permuted or shifted in the world: refused
            check_same_grid(image, vol, what)
        except VolumeError as exc:
            raise fail(f"{exc} (add_case(..., reorient=True) does that for a pure axis flip / permutation)"
                       ) from None
    if mask is not None and labels is None:
        raise fail("a mask needs labels")
    if labels is None:
        return None, None
    top = (classes - 1) if classes else MAX_STORED_LABEL
    label_arr = _integer_array(name, "labels", labels.array, top, classes)
    if mask is None:
        mask_arr = np.ones(image.shape, dtype=np.uint8)
    else:
        mask_arr = (_integer_array(name, "mask", mask.array, MAX_STORED_LABEL, None) > 0).astype(np.uint8)
    return label_arr, mask_arr


def _integer_array(name: str, what: str, array: Any, top: int, classes: int | None) -> np.ndarray:
    """``array`` as uint8 after checking finite, integer-valued, within 0..top (message names the case)."""
    arr = np.asarray(array)
    prefix = f"case {name!r}: {what}"
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise WorkspaceError(f"{prefix} hold {arr.dtype} values; integer classes are needed")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            raise WorkspaceError(f"{prefix} have {int((~finite).sum())} NaN / Inf voxels")
        frac = arr != np.round(arr)
        if frac.any():
            raise WorkspaceError(f"{prefix} have {int(frac.sum())} non-integer voxels "
                                 f"(e.g. {float(arr[frac].flat[0]):g})")
    if arr.size and arr.min() < 0:
        raise WorkspaceError(f"{prefix} have negative values (min {arr.min():g})")
    if arr.size and arr.max() > top:
        allowed = f"the {classes} classes (0..{top})" if classes else f"0..{top} (stored as uint8)"
        raise WorkspaceError(f"{prefix} have value {arr.max():g}, outside {allowed}")
    return arr.astype(np.uint8)


# ------------------------------------------------------------------------------- versions and their lookup
def workspace_version_of(path: str | os.PathLike, workspace: Workspace | None = None) -> Any | None:
    """The workspace :class:`~napari_sscce.workspace.ModelVersion` whose file is ``path``, or ``None``.

    Without ``workspace``, the workspace holding ``path`` is looked for in its parent folders (the one place
    that knows where a workspace keeps its model files is the workspace manifest).
    """
    path = Path(path)
    if workspace is None:
        workspace = workspace_above(path)
        if workspace is None:
            return None
    try:
        target = path.resolve()
    except OSError:
        return None
    for version in workspace.versions:
        if (workspace.folder / version.path).resolve() == target:
            return version
    return None


def workspace_above(path: Path) -> Workspace | None:
    """The workspace whose folder holds ``path`` (up to four levels above it), or ``None``."""
    for parent in list(path.resolve().parents)[:4]:
        if (parent / MANIFEST).is_file():
            try:
                return Workspace(parent)
            except (WorkspaceError, OSError):
                return None
    return None


def version_label(path: str | os.PathLike) -> str | None:
    """``"<workspace folder name> v0003"`` for a workspace model version, else ``None``."""
    path = Path(path)
    ws = workspace_above(path)
    version = workspace_version_of(path, ws) if ws is not None else None
    return f"{ws.folder.name} {version.version}" if version is not None and ws is not None else None


def ensure_version(ws: Workspace, model: Path, metadata: dict[str, Any]) -> tuple[Path, str]:
    """The starting model as a workspace version: ``(its path in the workspace, version)``.

    A model from outside becomes a new, current version ("model before fine-tuning").
    """
    version = workspace_version_of(model, ws)
    if version is not None:
        return ws.folder / version.path, version.version
    name = ws.add_model_version(
        model,
        {"note": "model before fine-tuning", "method": metadata.get("method")},
        metadata.get("val_metrics") or {},
    )
    return ws.version_path(name), name
