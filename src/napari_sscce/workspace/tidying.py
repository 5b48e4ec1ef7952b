"""Opening tidies, and moves or deletes only what the workspace owns (the clean-up half of ``Workspace``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from napari_sscce.atomic import TEMP_MARKER
from napari_sscce.workspace.files import (
    Quarantine,
    our_temporary,
    owned_file,
    owned_folder,
    size_of,
)
from napari_sscce.workspace.manifest import (
    _CASE_FILE,
    _VERSION_DIR,
    CASE_FOLDERS,
)


class Tidying:
    """Mixin of :class:`~napari_sscce.workspace.Workspace`: the clean-up run when a workspace opens."""

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
