"""Model versions and their lookup: which workspace version a model file is, and its short label."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_sscce.workspace.manifest import (
    MANIFEST,
    WorkspaceError,
)

# ------------------------------------------------------------------------------- versions and their lookup
if TYPE_CHECKING:  # pragma: no cover
    from napari_sscce.workspace import Workspace


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
    from napari_sscce.workspace import Workspace

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
