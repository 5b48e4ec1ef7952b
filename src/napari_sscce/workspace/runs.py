"""Run folders: one per fine-tune, marked as ours, freed after the verdict and bounded in number and size."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from napari_sscce.atomic import TEMP_MARKER, atomic_write_json
from napari_sscce.workspace.files import (
    HEAVY_FILES,
    RUN_MARKER,
    RUN_MODEL,
    RUN_VIEW,
    TRAIN_FILES,
    lock_held,
    our_temporary,
    owned_file,
    owned_folder,
    pid_alive,
    remove_tree,
    size_of,
)
from napari_sscce.workspace.manifest import (
    KEEP_RUNS,
    MAX_RUN_BYTES,
    RUNS,
    STALE_RUN_SECONDS,
    WorkspaceError,
    _writing,
)


class RunFolders:
    """Mixin of :class:`~napari_sscce.workspace.Workspace`: the ``runs/`` folder."""

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


