"""What the workspace may remove, and how: only files it can prove it wrote, never through a symlink or
outside its resolved folder, unreferenced files moved to a quarantine folder rather than deleted (issue 24).

Used by :mod:`napari_sscce.workspace` with the workspace lock held. The rules:

* A folder of the workspace (``images/``, ``labels/``, ``masks/``, ``models/``, ``runs/``) is only looked into
  when it is a real folder whose resolved path is ``<resolved workspace>/<name>``: a symlinked folder may be
  another workspace's, so nothing in it is touched (:func:`owned_folder`).
* A file is only moved or deleted when it is a regular file (not a symlink) directly in such a folder
  (:func:`owned_file`).
* Orphans (case files named ``<case>__<8 hex>.nii.gz`` or ``models/vNNNN/`` folders that the manifest does not
  name) are moved to ``<workspace>/quarantine/<time>/<folder>/`` (:class:`Quarantine`); napari-sscce never
  deletes anything there.
* Temporaries of :mod:`napari_sscce.atomic` are deleted only when their target is one of the workspace's own
  file names and they are older than the last manifest commit (a writer that is still running holds the lock
  and commits after writing them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_sscce.atomic import TEMP_MARKER

__all__ = ["Quarantine", "QUARANTINE", "owned_file", "owned_folder", "our_temporary", "write_problem"]

#: folder (inside the workspace) receiving the files the workspace no longer references
QUARANTINE = "quarantine"
#: a case file written by the workspace: ``<case>__<8 hex digits>.nii.gz``
CASE_FILE = re.compile(r"^.+__[0-9a-f]{8}\.nii\.gz$")
VERSION_DIR = re.compile(r"^v\d{4,}$")
ROOT_FILES = ("manifest.json", "splits.json")


def owned_folder(root: Path, name: str) -> Path | None:
    """``root / name`` when it is a real folder of the workspace (no symlink, resolving to itself), or None.

    ``root`` is the resolved workspace folder.
    """
    path = root / name
    try:
        if path.is_symlink() or not path.is_dir():
            return None
        return path if path.resolve() == path else None
    except OSError:
        return None


def owned_file(path: Path, folder: Path) -> bool:
    """Whether ``path`` is a regular file (not a symlink) directly inside the owned ``folder``."""
    try:
        return (not path.is_symlink()) and path.is_file() and path.resolve().parent == folder
    except OSError:
        return False


def our_temporary(name: str, kind: str) -> bool:
    """Whether ``name`` is a temporary of :func:`napari_sscce.atomic.atomic_path` for one of the workspace's
    own files (``kind``: ``"root"``, ``"case"`` or ``"model"``)."""
    if not name.startswith(".") or TEMP_MARKER not in name:
        return False
    target = name[1:name.index(TEMP_MARKER)]
    if kind == "root":
        return target in ROOT_FILES
    if kind == "case":
        return bool(CASE_FILE.match(target))
    return target.startswith("model.")


@dataclass
class Quarantine:
    """A ``<workspace>/quarantine/<time>/`` folder, made on the first move into it.

    Parameters
    ----------
    root : pathlib.Path
        The resolved workspace folder.
    """

    root: Path
    folder: Path | None = None
    moved: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def _target(self) -> Path | None:
        if self.folder is not None:
            return self.folder
        base = self.root / QUARANTINE
        if base.is_symlink() or (base.exists() and not base.is_dir()):
            self.problems.append(f"{base} is not a real folder of the workspace: nothing was quarantined")
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        folder = base / stamp
        folder.mkdir(parents=True, exist_ok=False)
        (folder / "README.txt").write_text(
            "napari-sscce moved these files here because the workspace manifest (manifest.json) no longer\n"
            "names them (left by a crash, or by an edit of the manifest). Nothing here is ever deleted by\n"
            "napari-sscce: move a file back to its folder and add it again to restore it, or delete it.\n",
            encoding="utf-8",
        )
        self.folder = folder
        return folder

    def move(self, path: Path, sub: str) -> bool:
        """Move ``path`` (a file or folder) to ``<quarantine>/<sub>/<name>``; False (noted) when it fails."""
        try:
            target = self._target()
            if target is None:
                return False
            dest = target / sub / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
        except OSError as exc:
            self.problems.append(f"{path}: left in place, could not be quarantined ({exc.strerror or exc})")
            return False
        self.moved.append(f"{sub}/{path.name}")
        return True


def size_of(path: Path) -> int:
    """Bytes of a file, or of the regular files under a folder (symlinks not followed)."""
    if path.is_file() and not path.is_symlink():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                p = Path(dirpath) / name
                if not p.is_symlink():
                    total += p.stat().st_size
    return total


def write_problem(path: str | os.PathLike, exc: OSError) -> str:
    """A readable sentence for a failed write of ``path`` (read-only folder, full disk, ...)."""
    code = exc.errno
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: the folder is read-only (or you may not write to it)"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"cannot write {path}: disk full (no space left on its disk); free some space and try again"
    return f"cannot write {path}: {exc.strerror or exc}"


# ----------------------------------------------------------------------------------------------- run folders
#: marker a workspace writes at the start of each run folder it makes: the proof the folder is ours
RUN_MARKER = ".sscce-run.json"
#: files a training run writes to its folder (``training.run_folder.RUN_FILES`` and its lock)
TRAIN_FILES = ("config.json", "splits.json", "metrics.jsonl", "last.safetensors", "best.safetensors",
               "train_state.pt", ".sscce-run.lock")
#: the large ones, removed once the run is over (a registered version holds its own copy under models/)
HEAVY_FILES = ("last.safetensors", "best.safetensors", "train_state.pt")
#: sub-folders of a run that only napari-sscce writes: the training output and the data view
RUN_MODEL, RUN_VIEW = "model", "view"


def remove_tree(folder: Path, keep: set[Path]) -> int:
    """Delete ``folder``'s files and symlinks (links themselves, never their targets) bottom-up, except the
    resolved paths in ``keep``; empty folders are removed. Returns the bytes freed."""
    freed = 0
    for dirpath, dirnames, files in os.walk(folder, topdown=False):
        here = Path(dirpath)
        for name in files + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            with contextlib.suppress(OSError):
                if path in keep or (not path.is_symlink() and path.resolve() in keep):
                    continue
                size = 0 if path.is_symlink() else path.stat().st_size
                path.unlink()
                freed += size
        with contextlib.suppress(OSError):
            here.rmdir()  # only when empty
    return freed


def lock_held(path: Path) -> bool:
    """Whether another holder has the :mod:`filelock` lock file ``path`` (False when there is none)."""
    from filelock import FileLock, Timeout

    if not path.is_file():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this machine is running."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # someone else's process
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True
