"""Run one long core function (inference, training) off the GUI thread, with progress and cancel.

The core functions take ``progress`` and ``cancel`` keyword arguments (``napari_sscce.progress``). A
:class:`WorkRunner` calls such a function in a napari ``thread_worker``, relays its
:class:`~napari_sscce.progress.ProgressEvent` objects to the GUI thread through a Qt signal (a signal emitted
in the worker thread reaches slots of an object living in the GUI thread as a queued call), and reports
the end through exactly one of ``finished(result)``, ``cancelled()`` or ``failed(exception)``.

Exceptions are caught inside the worker so that a cancel is not shown as an error and a failure is reported
once, by the widget, in words.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from napari_sscce.progress import Cancelled, CancelToken, ProgressEvent


@dataclass
class _Outcome:
    kind: str  # "ok" | "cancelled" | "error"
    value: Any = None
    trace: str = ""


class WorkRunner(QObject):
    """Runs one function at a time in a background thread.

    Signals
    -------
    progress(ProgressEvent)
        Every event the function reports, in the GUI thread.
    finished(object)
        The function's return value.
    cancelled()
        The function stopped at a cancel check.
    failed(Exception)
        The function raised; ``last_traceback`` holds the text.
    """

    progress = Signal(object)
    finished = Signal(object)
    cancelled = Signal()
    failed = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._token: CancelToken | None = None
        self._worker = None
        self._detached = False  # set by shutdown(): the GUI is going, the thread must not reach it any more
        self.last_traceback = ""

    @property
    def running(self) -> bool:
        """Whether a function is running."""
        return self._worker is not None

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, progress=..., cancel=..., **kwargs)`` in a worker thread.

        Raises
        ------
        RuntimeError
            When a previous function is still running.
        """
        if self.running:
            raise RuntimeError("a task is already running; cancel it or wait for it to finish")
        token = CancelToken()
        self._token = token

        def emit(event: ProgressEvent) -> None:
            if not self._detached:
                self.progress.emit(event)

        def call() -> _Outcome:
            try:
                return _Outcome("ok", fn(*args, progress=emit, cancel=token, **kwargs))
            except Cancelled:
                return _Outcome("cancelled")
            except Exception as exc:  # reported to the user by the widget
                return _Outcome("error", exc, traceback.format_exc())

        worker = create_worker(call, _start_thread=False)
        worker.returned.connect(self._on_returned)
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running function to stop at its next cancel check."""
        if self._token is not None:
            self._token.cancel()

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Cancel the running function; wait (GUI events still handled) until it ends, ``timeout_s`` at most.

        Used when the window closes: after this call no signal of the function reaches the widgets any more
        (its end is still reported if it comes within ``timeout_s``; a late end is dropped).

        Returns
        -------
        bool
            Whether the function ended within ``timeout_s`` (or nothing was running).
        """
        import time

        from qtpy.QtCore import QCoreApplication

        self.cancel()
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.02)
        ended = not self.running
        self._detached = True
        return ended

    def _on_returned(self, outcome: _Outcome) -> None:
        if self._detached:
            self._worker = None
            return
        self._worker = None
        self._token = None
        if outcome.kind == "ok":
            self.finished.emit(outcome.value)
        elif outcome.kind == "cancelled":
            self.cancelled.emit()
        else:
            self.last_traceback = outcome.trace
            self.failed.emit(outcome.value)


def describe_event(event: ProgressEvent) -> str:
    """One status line for a progress event."""
    if event.message:
        return event.message
    if event.total:
        return f"{event.stage}: {event.step}/{event.total}"
    return f"{event.stage}: {event.step}"
