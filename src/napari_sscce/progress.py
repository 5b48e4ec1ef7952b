"""The contract for long work: a progress callback and a cancel flag, shared by API, CLI and widgets.

Long-running functions (inference, training) take ``progress: ProgressCallback | None`` and
``cancel: CancelToken | None``. They call ``progress(ProgressEvent(...))`` as they go and check
``cancel.raise_if_cancelled()`` between units of work. The CLI turns events into a status line; the
napari widgets run the same function in a ``thread_worker`` and turn events into a progress bar
and a loss curve. Nothing here imports Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Cancelled(Exception):
    """Raised inside long work when its :class:`CancelToken` was set."""


class CancelToken:
    """A thread-safe cancel flag."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if cancel was requested."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


@dataclass
class ProgressEvent:
    """One progress report.

    Attributes
    ----------
    stage : str
        What is running, e.g. ``"inference"``, ``"train"``, ``"validate"``.
    step : int
        Units done so far.
    total : int
        Units in all (0 when unknown).
    message : str
        A human-readable line.
    values : dict
        Numbers to plot or log (loss terms, lr, validation Dice ...).
    """

    stage: str
    step: int
    total: int = 0
    message: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Done fraction in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.step / self.total) if self.total else 0.0


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Call ``progress(event)`` when a callback was given."""
    if progress is not None:
        progress(event)


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` when ``cancel`` is set."""
    if cancel is not None:
        cancel.raise_if_cancelled()
