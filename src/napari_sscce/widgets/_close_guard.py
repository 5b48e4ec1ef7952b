"""Closing the window (or ``viewer.close()``) while a widget's work runs: ask, cancel, wait, then close.

Without this guard the worker thread went on after the window was gone: its progress signals reached deleted
Qt objects (``viewer.close()`` during a fine-tune ended in a segmentation fault), and a fine-tune the person
had walked away from still adopted its new model minutes later.

:class:`CloseGuard` watches the close events of the viewer's Qt widgets (``QtViewer`` is closed first by
``viewer.close()``, then the main window). When the widget reports work in progress it asks
:func:`ask_cancel_on_close` (tests replace it); "keep working" ignores a close the person asked for (the
window's close button); otherwise, or when the close cannot be refused (``viewer.close()``), the widget's
``on_close`` callback cancels and waits for the work (bounded) before the window goes.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QMessageBox, QWidget


def ask_cancel_on_close(parent: QWidget | None, what: str) -> bool:
    """Ask whether to cancel ``what`` and close; True to cancel (the default button)."""
    answer = QMessageBox.question(
        parent,
        "napari-sscce: work in progress",
        f"{what} is still running.\n\nCancel it and close? Cancelling keeps every correction you added and "
        "adds no new model.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.Yes,
    )
    return answer == QMessageBox.StandardButton.Yes


def _weak(fn: Callable[..., Any]) -> Callable[[], Callable[..., Any] | None]:
    """A weak reference to a bound method (a plain function is held as it is)."""
    if hasattr(fn, "__self__"):
        return weakref.WeakMethod(fn)  # type: ignore[arg-type]
    return lambda: fn


class CloseGuard(QObject):
    """An event filter on the viewer's window that stops a widget's work before the window closes.

    Parameters
    ----------
    viewer : napari.Viewer
    busy : callable
        ``busy() -> str``: what is running (e.g. "Fine-tuning"), empty when nothing is.
    on_close : callable
        ``on_close()``: cancel the work and wait for it; called at most once per running task.
    parent : QObject, optional
    """

    def __init__(
        self,
        viewer: Any,
        busy: Callable[[], str],
        on_close: Callable[[], None],
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        # weak: the guard lives on the viewer's window and must not keep the widget (and the viewer) alive
        self._busy = _weak(busy)
        self._on_close = _weak(on_close)
        self._watched: list[weakref.ref[QObject]] = []  # weak: the guard must not keep the viewer alive
        window = getattr(viewer, "window", None)
        for name in ("_qt_viewer", "_qt_window"):
            # napari has no public close hook: its private Qt objects are the only place to catch
            # ``viewer.close()`` before the layers' Qt side is torn down (deprecated; gone from napari 0.10)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                target = getattr(window, name, None)
            if isinstance(target, QObject):
                target.installEventFilter(self)
                self._watched.append(weakref.ref(target))

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        """Intercept the close events of the watched widgets."""
        if event.type() != QEvent.Type.Close:
            return False
        busy, on_close = self._busy(), self._on_close()
        if busy is None or on_close is None:  # the widget is gone
            return False
        try:
            what = busy()
        except RuntimeError:  # the widget is already deleted
            return False
        if not what:
            return False
        refusable = event.spontaneous()  # the close button, not viewer.close()
        if not ask_cancel_on_close(obj if isinstance(obj, QWidget) else None, what) and refusable:
            event.ignore()
            return True
        on_close()
        return False

    def remove(self) -> None:
        """Stop watching."""
        for ref in self._watched:
            target = ref()
            if target is None:
                continue
            try:
                target.removeEventFilter(self)
            except RuntimeError:
                pass
        self._watched = []
