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
* **Opening tidies, and deletes only what it owns** (issue 24, :mod:`napari_sscce.workspace.files`,
  :mod:`~napari_sscce.workspace.tidying`).
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
import shutil
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from napari_sscce.atomic import atomic_path, atomic_write_json, crash_point
from napari_sscce.io.channels import read_multichannel
from napari_sscce.io.volume import Volume
from napari_sscce.workspace.files import (
    RUN_MARKER,
    owned_file,
    owned_folder,
)
from napari_sscce.workspace.manifest import (
    _VERSION_DIR,
    FORMAT_VERSION,
    LOCK,
    LOCK_TIMEOUT,
    MANIFEST,
    SPLITS,
    VOLUME_SUFFIX,
    Adoption,
    CaseEntry,
    ModelVersion,
    WorkspaceError,
    WorkspaceWriteError,
    _known,
    _now,
    _read_volume,
    _write_volume,
    _writing,
    inside,
    manifest_cases,
    read_manifest,
    safe_case_name,
)
from napari_sscce.workspace.runs import RunFolders
from napari_sscce.workspace.tidying import Tidying
from napari_sscce.workspace.validation import (
    _checkpoint_classes,
    _reoriented,
    _validated,
)

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "RUN_MARKER", "Adoption", "CaseEntry", "ModelVersion", "Workspace",
    "WorkspaceError", "WorkspaceWriteError", "ensure_version", "inside", "manifest_cases", "read_manifest",
    "safe_case_name", "version_label", "workspace_above", "workspace_version_of",
]


class Workspace(Tidying, RunFolders):
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
            raise WorkspaceWriteError.of(self.folder / LOCK, exc) from None
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
            self._refuse_other_channels(manifest, final, list(image.channel_names))
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
                channels=list(image.channel_names),
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

    def _refuse_other_channels(self, manifest: dict[str, Any], name: str, channels: list[str]) -> None:
        """Every image of a workspace has the same channels (a model trains on them together)."""
        for other, entry in manifest["cases"].items():
            theirs = list(entry.get("channels") or [])
            if other != name and theirs != channels:
                said = ", ".join(channels) if channels else "one channel"
                raise WorkspaceError(
                    f"workspace {self.folder}: case {name!r} has {said} but case {other!r} has "
                    f"{', '.join(theirs) if theirs else 'one channel'}; every image of a workspace needs the "
                    "same channels, in the same order (nothing was changed)"
                )

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
        if entry.channels:  # a 4D NIfTI, channels last; the names live in the manifest
            image = read_multichannel(self._path(entry.image))
            image.channel_names = tuple(entry.channels)
        else:
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
    def __repr__(self) -> str:
        n_lab = len(self.labeled_cases)
        return (
            f"Workspace({str(self.folder)!r}: {n_lab} labeled / {len(self.cases) - n_lab} unlabeled cases, "
            f"{len(self.versions)} model versions, current {self.current_version})"
        )


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




from napari_sscce.workspace.versions import (  # noqa: E402 - they look Workspace up
    ensure_version,
    version_label,
    workspace_above,
    workspace_version_of,
)
