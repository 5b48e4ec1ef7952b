"""The labeled set a person builds while correcting segmentations, and the model versions trained on it.

Layout on disk (see ``docs/design.md``)::

    workspace/
      manifest.json          # cases, model versions, current version (written last, atomically)
      images/<case>.nii.gz
      labels/<case>.nii.gz
      masks/<case>.nii.gz    # 1 where a person confirmed the label
      splits.json            # written by :meth:`Workspace.dataset_folder` for ``io.datasets.open_dataset``
      models/v0001/model.safetensors

Every file is written to a temporary file in its folder and renamed into place; the manifest is written
after the volumes it points to. A crash (or an exception) in the middle of :meth:`Workspace.add_case`
therefore leaves the previous manifest and the previous files of that case untouched: the new files of a
case are all written to temporary files first and only renamed once all of them were written.

Nothing here imports Qt; the fine-tune widget and the tests use it headless.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import atomic_path, atomic_write_json
from napari_sscce.io.readers import read_volume
from napari_sscce.io.volume import Volume
from napari_sscce.io.writers import write_volume

__all__ = ["CaseEntry", "ModelVersion", "Workspace", "WorkspaceError"]

MANIFEST = "manifest.json"
SPLITS = "splits.json"
FORMAT_VERSION = 1
VOLUME_SUFFIX = ".nii.gz"


class WorkspaceError(ValueError):
    """A workspace folder or its manifest is unusable; the message names the file and the problem."""


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


@dataclass
class ModelVersion:
    """One model of the workspace's history (``path`` relative to the workspace folder)."""

    version: str
    path: str
    created: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def safe_case_name(name: str) -> str:
    """A file-system safe case name: letters, digits, ``-``, ``_``, ``.``; other characters become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "case"


def _write_volume(volume: Volume, path: Path) -> None:
    write_volume(volume, path)


def _read_volume(path: Path, is_label: bool) -> Volume:
    return read_volume(path, is_label=is_label)


class Workspace:
    """A folder holding a growing labeled set and the models fine-tuned on it.

    Parameters
    ----------
    folder : path-like
        The workspace folder; created (with an empty manifest) when it does not exist.

    Raises
    ------
    WorkspaceError
        When ``manifest.json`` exists but is not a workspace manifest.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._manifest = self._load()

    # ------------------------------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        """Path of ``manifest.json``."""
        return self.folder / MANIFEST

    def _load(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format": FORMAT_VERSION, "created": _now(), "cases": {}, "models": [], "current": None}
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"{self.manifest_path}: cannot read the workspace manifest ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
            raise WorkspaceError(f"{self.manifest_path}: not a napari-sscce workspace manifest (no 'cases')")
        data.setdefault("models", [])
        data.setdefault("current", None)
        return data

    def _save(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)
        self._manifest = manifest

    def _copy(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest))

    def reload(self) -> None:
        """Read the manifest again (another process may have changed it)."""
        self._manifest = self._load()

    # --------------------------------------------------------------------------------------------- cases
    @property
    def cases(self) -> list[CaseEntry]:
        """All cases, labeled and unlabeled, in the order they were first added."""
        return [CaseEntry(**entry) for entry in self._manifest["cases"].values()]

    @property
    def labeled_cases(self) -> list[CaseEntry]:
        """The cases with a label map."""
        return [c for c in self.cases if c.labeled]

    def case(self, name: str) -> CaseEntry:
        """The entry of case ``name`` (``KeyError`` naming it when absent)."""
        try:
            return CaseEntry(**self._manifest["cases"][name])
        except KeyError:
            raise KeyError(f"no case {name!r} in workspace {self.folder}") from None

    def add_case(
        self,
        image: Volume,
        labels: Volume | None,
        mask: Volume | None = None,
        name: str | None = None,
    ) -> str:
        """Add (or update) a case: its image, corrected labels and annotation mask.

        Parameters
        ----------
        image : Volume
            The scan.
        labels : Volume or None
            The corrected label map on the image's grid; ``None`` adds an unlabeled case.
        mask : Volume, optional
            1 where a person confirmed the label, 0 elsewhere. ``None`` with ``labels`` means the whole
            label map was checked (all ones).
        name : str, optional
            Case name; defaults to ``image.name``. Adding a case with an existing name replaces that case
            (its ``added_at`` is kept) instead of adding a duplicate.

        Returns
        -------
        str
            The (file-system safe) case name.

        Raises
        ------
        ValueError
            When the label or mask shape differs from the image shape.
        """
        name = safe_case_name(name or image.name)
        if image.array.ndim != 3:
            raise ValueError(f"case {name!r}: the image must be 3D (z, y, x), got shape {image.shape}")
        for what, vol in (("labels", labels), ("mask", mask)):
            if vol is not None and vol.shape != image.shape:
                raise ValueError(
                    f"case {name!r}: {what} shape {vol.shape} differs from image shape {image.shape}"
                )
        if mask is not None and labels is None:
            raise ValueError(f"case {name!r}: a mask needs labels")

        files: dict[str, tuple[Volume, str]] = {"image": (image, f"images/{name}{VOLUME_SUFFIX}")}
        confirmed = 0.0
        if labels is not None:
            label_arr = np.asarray(labels.array).astype(np.uint8, copy=False)
            label_vol = labels.with_array(label_arr, is_label=True)
            if mask is None:
                mask_arr = np.ones(image.shape, dtype=np.uint8)
            else:
                mask_arr = (np.asarray(mask.array) > 0).astype(np.uint8)
            mask_vol = image.with_array(mask_arr, is_label=True)
            confirmed = float(mask_arr.mean()) if mask_arr.size else 0.0
            files["label"] = (label_vol, f"labels/{name}{VOLUME_SUFFIX}")
            files["mask"] = (mask_vol, f"masks/{name}{VOLUME_SUFFIX}")

        # write every file to a temporary name first; rename them all only when all were written
        with contextlib.ExitStack() as stack:
            for volume, rel in files.values():
                tmp = stack.enter_context(atomic_path(self.folder / rel))
                _write_volume(volume, tmp)

        manifest = self._copy()
        old = manifest["cases"].get(name, {})
        now = _now()
        entry = CaseEntry(
            name=name,
            image=files["image"][1],
            label=files["label"][1] if "label" in files else None,
            mask=files["mask"][1] if "mask" in files else None,
            source=str(image.source) if image.source else old.get("source"),
            added_at=old.get("added_at", now),
            updated_at=now,
            confirmed_fraction=confirmed,
        )
        manifest["cases"][name] = asdict(entry)
        self._save(manifest)
        return name

    def add_unlabeled(self, image: Volume, name: str | None = None) -> str:
        """Add an image without labels (used as unlabeled data by semi-supervised fine-tuning).

        An existing labeled case of the same name keeps its labels (only its image is rewritten).
        """
        name = safe_case_name(name or image.name)
        existing = self._manifest["cases"].get(name)
        if existing and existing.get("label"):
            labels = _read_volume(self.folder / existing["label"], True)
            mask = _read_volume(self.folder / existing["mask"], True) if existing.get("mask") else None
            return self.add_case(image, labels, mask, name=name)
        return self.add_case(image, None, None, name=name)

    def load_case(self, name: str) -> tuple[Volume, Volume | None, Volume | None]:
        """Read a case back: ``(image, labels or None, mask or None)``."""
        entry = self.case(name)
        image = _read_volume(self.folder / entry.image, False)
        labels = _read_volume(self.folder / entry.label, True) if entry.label else None
        mask = _read_volume(self.folder / entry.mask, True) if entry.mask else None
        return image, labels, mask

    def remove_case(self, name: str) -> None:
        """Remove a case from the manifest, then delete its files."""
        entry = self.case(name)
        manifest = self._copy()
        del manifest["cases"][name]
        self._save(manifest)
        for rel in (entry.image, entry.label, entry.mask):
            if rel:
                (self.folder / rel).unlink(missing_ok=True)

    def dataset_folder(self, val_cases: list[str] | None = None) -> Path:
        """Write ``splits.json`` and return the folder for ``io.datasets.open_dataset`` / the training loop.

        Splits: ``labeled`` = the labeled cases not in ``val_cases``, ``unlabeled`` = the cases without
        labels, ``val`` = ``val_cases`` (default none: while a person builds the set, every corrected case is
        worth more as training data; the training loop then keeps its last model).

        Returns
        -------
        pathlib.Path
            The workspace folder (it holds ``images/``, ``labels/``, ``masks/`` and ``splits.json``).
        """
        val = [safe_case_name(v) for v in (val_cases or [])]
        for v in val:
            if v not in self._manifest["cases"] or not self._manifest["cases"][v].get("label"):
                raise KeyError(f"validation case {v!r} is not a labeled case of workspace {self.folder}")
        splits = {
            "labeled": [c.name for c in self.labeled_cases if c.name not in val],
            "unlabeled": [c.name for c in self.cases if not c.labeled],
            "val": val,
        }
        atomic_write_json(self.folder / SPLITS, splits)
        return self.folder

    # ------------------------------------------------------------------------------------ model versions
    @property
    def versions(self) -> list[ModelVersion]:
        """Every model version, oldest first."""
        return [ModelVersion(**v) for v in self._manifest["models"]]

    model_versions = versions

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
                return self.folder / v.path
        raise KeyError(f"no model version {version!r} in workspace {self.folder}")

    def add_model_version(
        self,
        checkpoint_path: str | Path,
        info: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        make_current: bool = True,
    ) -> str:
        """Copy a checkpoint into ``models/vNNNN/`` and record it; older versions are kept.

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
        src = Path(checkpoint_path)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: checkpoint file not found")
        numbers = [int(v.version.lstrip("v")) for v in self.versions if v.version.lstrip("v").isdigit()]
        version = f"v{(max(numbers) + 1) if numbers else 1:04d}"
        rel = f"models/{version}/model{''.join(src.suffixes) or '.safetensors'}"
        with atomic_path(self.folder / rel) as tmp:
            shutil.copyfile(src, tmp)
        entry = ModelVersion(
            version=version,
            path=rel,
            created=_now(),
            info={"source": str(src), "parent": self.current_version, **(info or {})},
            metrics=dict(metrics or {}),
        )
        manifest = self._copy()
        manifest["models"].append(json.loads(json.dumps(asdict(entry), default=str)))
        if make_current:
            manifest["current"] = version
        self._save(manifest)
        return version

    def revert(self, version: str) -> Path:
        """Make ``version`` the current model again (newer versions stay on disk); returns its path."""
        path = self.version_path(version)
        manifest = self._copy()
        manifest["current"] = version
        self._save(manifest)
        return path

    def __repr__(self) -> str:
        n_lab = len(self.labeled_cases)
        return (
            f"Workspace({str(self.folder)!r}: {n_lab} labeled / {len(self.cases) - n_lab} unlabeled cases, "
            f"{len(self.versions)} model versions, current {self.current_version})"
        )
