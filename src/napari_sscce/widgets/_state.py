"""State shared by the three dock widgets of one viewer, and settings remembered between sessions.

The Segment, Uncertainty and Fine-tune widgets are created separately by napari. They share a
:class:`Session` per viewer: the model in use and the workspace folder. Settings that outlive the
session (recent model files, the last workspace folder) live in a small JSON file in the user's config folder
(``$NAPARI_SSCCE_CONFIG_DIR`` or ``~/.config/napari-sscce/widgets.json``), not in Qt's registry, so that
they are easy to inspect and tests can redirect them.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_sscce.atomic import atomic_write_json
from napari_sscce.models.checkpoint import Checkpoint, load_checkpoint

CONFIG_ENV = "NAPARI_SSCCE_CONFIG_DIR"
MAX_RECENT = 8
#: a small model shipped with the package (if present) and the demo's cached model
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "data" / "default_model.safetensors"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-sscce"
DEMO_MODEL = CACHE_DIR / "demo_model.safetensors"


def settings_path() -> Path:
    """Where the widget settings are kept."""
    base = os.environ.get(CONFIG_ENV)
    folder = (
        Path(base)
        if base
        else Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "napari-sscce"
    )
    return folder / "widgets.json"


def load_settings() -> dict[str, Any]:
    """The remembered settings (empty when none or unreadable)."""
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def update_settings(**values: Any) -> None:
    """Remember ``values`` (best effort: a read-only config folder is not an error)."""
    data = {**load_settings(), **values}
    try:
        atomic_write_json(settings_path(), data)
    except OSError:
        pass


def remember_model(path: str | Path) -> None:
    """Put ``path`` first in the recent model list."""
    path = str(Path(path).resolve())
    recent = [p for p in load_settings().get("recent_models", []) if p != path]
    update_settings(recent_models=[path, *recent][:MAX_RECENT])


def model_label(path: Path) -> str:
    """A short name for a model file: ``"<workspace> v0003"`` for workspace versions, else the file name.

    Whether a file is a workspace version is read from the workspace manifest
    (:func:`napari_sscce.workspace.version_label`), not guessed from the folder layout.
    """
    from napari_sscce.workspace import version_label

    return version_label(path) or Path(path).name


def packaged_models() -> list[tuple[str, Path]]:
    """``(title, path)`` of the models shipped with the package (``"Hippocampus MRI — CCE"``, ...)."""
    from napari_sscce.models.pretrained import list_models

    return [(model.title, model.path) for model in list_models()]


def known_models() -> list[tuple[str, Path]]:
    """``(label, path)`` of the models to offer: packaged models by name, bundled, demo cache, then recent
    files that still exist."""
    out: list[tuple[str, Path]] = packaged_models()
    if BUNDLED_MODEL.is_file():
        out.append(("bundled default", BUNDLED_MODEL))
    if DEMO_MODEL.is_file():
        out.append(("demo model (cache)", DEMO_MODEL))
    seen = {p.resolve() for _, p in out}
    for p in load_settings().get("recent_models", []):
        path = Path(p)
        if path.is_file() and path.resolve() not in seen:
            out.append((model_label(path), path))
            seen.add(path.resolve())
    return out


class Session(QObject):
    """The model in use by a viewer's widgets (``model_changed(path)`` tells the others); Segment settings.

    The last model file loaded stays in memory (:meth:`checkpoint`), so that segmenting again does not read
    the file again while it is unchanged.
    """

    model_changed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.model_path: Path | None = None
        #: the Segment widget's settings (its ``config`` method), used to re-segment after a fine-tune
        self.inference_config: Callable[[], Any] | None = None
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[str, int, int], Checkpoint] | None = None

    def checkpoint(self, path: str | Path) -> Checkpoint:
        """The model file ``path``, loaded; from memory while its path, mtime and size are unchanged.

        Safe to call from worker threads. Raises what
        :func:`napari_sscce.models.checkpoint.load_checkpoint` raises.
        """
        resolved = Path(path).resolve()
        stat = resolved.stat()
        key = (str(resolved), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
        checkpoint = load_checkpoint(resolved)
        with self._lock:
            self._loaded = (key, checkpoint)
        return checkpoint

    def set_model(self, path: str | Path | None) -> None:
        """Use ``path`` from now on (announces it when it changed)."""
        new = Path(path) if path else None
        if new != self.model_path:
            self.model_path = new
            self.model_changed.emit(str(new) if new else "")


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use)."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = Session()
        _SESSIONS[viewer] = session
    return session


def predict_with_session(
    session: Session, predict: Callable[..., Any], path: str | Path, volume: Any, config: Any, **kwargs: Any
) -> Any:
    """``predict(model, volume, config, **kwargs)`` with the session's loaded copy of the model file ``path``.

    For a widget's runner (a worker thread): the file is read there the first time, then kept.
    """
    return predict(session.checkpoint(path), volume, config, **kwargs)


def model_summary(metadata: dict[str, Any]) -> str:
    """A few lines describing a checkpoint: method, classes, patch, spacing, validation Dice."""
    classes = metadata.get("class_names") or [str(i) for i in range(int(metadata.get("num_classes", 0)))]
    lines = [
        f"method: {metadata.get('method', '?')}",
        f"classes: {', '.join(map(str, classes))}",
        f"patch (z, y, x): {tuple(metadata['patch_size']) if metadata.get('patch_size') else '?'}",
    ]
    spacing = metadata.get("spacing")
    if spacing:
        lines.append("spacing (mm): " + " x ".join(f"{float(s):g}" for s in spacing))
    val = metadata.get("val_metrics") or {}
    dice = val.get("dice", val.get("mean_dice"))
    if isinstance(dice, dict):
        dice = dice.get("mean")
    if dice is not None:
        try:
            lines.append(f"validation Dice: {float(dice):.3f}")
        except (TypeError, ValueError):
            pass
    return "\n".join(lines)
