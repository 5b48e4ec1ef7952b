"""What every ``sscce`` subcommand shares: one progress adapter, one Ctrl-C handling, one error surface.

- :class:`ProgressPrinter` turns :class:`~napari_sscce.progress.ProgressEvent` into "step n of N", rate and
  time left on stderr, and prints the events that say something (a plan, a warning) as lines of their own.
- :func:`sigint_cancels` makes the first Ctrl-C set the run's :class:`~napari_sscce.progress.CancelToken`
  (the library stops at its next check and cleans up); a second Ctrl-C raises :class:`KeyboardInterrupt`.
- :func:`run_command` runs a subcommand's function and turns every failure into one line
  ``sscce <cmd>: <file>: <problem>`` on stderr and a non-zero exit (``--debug`` also prints the traceback);
  a cancelled run exits with :data:`EXIT_CANCELLED` (130, as a shell reports SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from napari_sscce.progress import Cancelled, CancelToken, ProgressEvent

#: exit status of a run stopped by Ctrl-C (128 + SIGINT)
EXIT_CANCELLED = 130
#: exit status of a refused input or option (a message names the file or the flag)
EXIT_USER_ERROR = 2
#: exit status of any other failure
EXIT_FAILURE = 1

RunFunction = Callable[[argparse.Namespace, CancelToken], int]


class UserError(Exception):
    """An error whose message is for the user (bad file, bad option): printed without a traceback."""


# ------------------------------------------------------------------------------------------ arguments
def add_device_options(p: argparse.ArgumentParser, device: str | None, precision: str | None,
                       precision_default_text: str | None = None) -> None:
    """``--device`` and ``--precision``, spelled the same way in every subcommand.

    ``None`` defaults leave the choice to the core's config (its default is then named in the help).
    """
    from napari_sscce.precision import PRECISIONS

    p.add_argument("--device", default=device, metavar="DEVICE",
                   help=f"auto, cpu, cuda, cuda:N or mps (default: {device or 'auto'})")
    p.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help=f"default: {precision_default_text or precision}")


def add_debug_flag(p: argparse.ArgumentParser, *, top_level: bool) -> None:
    """``--debug`` before or after the subcommand (the subcommand's copy never resets the global one)."""
    p.add_argument("--debug", action="store_true", default=False if top_level else argparse.SUPPRESS,
                   help="on failure, also print the Python traceback")


def resolve_model_arg(name_or_path: str) -> str:
    """A model file path from ``--model`` or ``--init``: an existing file, or a packaged model's name."""
    from napari_sscce.models.pretrained import resolve_model

    try:
        return str(resolve_model(name_or_path))
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def check_init_compatible(method: str, init: str | None) -> None:
    """A starting model follows the fine-tune's compatibility rule (one message for CLI and widget)."""
    if not init:
        return
    from napari_sscce.methods import IncompatibleModelError, check_compatible

    try:
        check_compatible(method, init)
    except IncompatibleModelError as exc:
        raise UserError(str(exc)) from None


# ------------------------------------------------------------------------------------------ progress
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressPrinter:
    """The one progress adapter of the CLI: a :data:`~napari_sscce.progress.ProgressCallback`.

    Training steps (events with a ``"loss"``) and inference windows update a status line
    ``<what>: step n of N, <rate> <unit>/s, <time> left, loss ..., val_dice ...`` on stderr; other events
    with a message (the plan of a run, a precision choice, a file done, a warning) are printed as lines on
    stdout, as a log of the run. On a terminal the status line is redrawn in place; elsewhere (a log file)
    it is printed at most every ``interval`` seconds and at the last step.

    Parameters
    ----------
    unit : str
        What one step is, for the rate (``"it"``, ``"window"``).
    quiet : bool
        No status line (lines of their own are still printed).
    stream : text stream, optional
        Where the status line goes; default ``sys.stderr``.
    out : text stream, optional
        Where the lines of their own go; default ``sys.stdout``.
    interval : float, optional
        Seconds between status lines off a terminal (default 10; 0.2 on a terminal).
    clock : callable
        Seconds as a float (tests pass a fake clock).
    """

    def __init__(self, unit: str = "step", *, quiet: bool = False, stream: TextIO | None = None,
                 out: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unit, self.quiet, self.clock = unit, quiet, clock
        self.stream = stream if stream is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.metrics: dict[str, str] = {}
        self._series: tuple[str, int] | None = None
        self._start = (0.0, 0)
        self._last_print = -float("inf")
        self._open_line = False

    def __call__(self, event: ProgressEvent) -> None:
        """Take one event."""
        values = event.values or {}
        if "loss" in values or "val_dice" in values:
            self._keep_metrics(values)
            if "loss" in values:
                self.tick(event.stage, event.step, event.total)
        elif event.stage == "inference" and event.total and event.step:
            self.tick(event.message.split(":")[0] if ": " in event.message else event.stage,
                      event.step, event.total)
        elif event.message:
            self.line(event.message)

    def _keep_metrics(self, values: dict[str, Any]) -> None:
        if "loss" in values:
            self.metrics["loss"] = f"{values['loss']:.4f}"
        if "val_dice" in values:
            self.metrics["val_dice"] = f"{values['val_dice']:.4f}"
        if values.get("skipped_steps"):
            self.metrics["skipped"] = str(values["skipped_steps"])

    def status(self, label: str, step: int, total: int) -> str:
        """The status line for ``step`` of ``total`` (rate and time left from the series' first step)."""
        now = self.clock()
        if self._series != (label, total) or step < self._start[1]:
            self._series, self._start = (label, total), (now, step)
        text = f"{label}: step {step} of {total}"
        elapsed, done = now - self._start[0], step - self._start[1]
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            text += f", {rate:.3g} {self.unit}/s, {_duration(max(0, total - step) / rate)} left"
        if self.metrics:
            text += ", " + ", ".join(f"{k} {v}" for k, v in self.metrics.items())
        return text

    def tick(self, label: str, step: int, total: int) -> None:
        """Update the status line."""
        text = self.status(label, step, total)
        if self.quiet:
            return
        now = self.clock()
        if step < total and now - self._last_print < self.interval:
            return
        self._last_print = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, message: str) -> None:
        """Print ``message`` as a line of its own on ``out`` (a terminal status line is redrawn next step)."""
        if self._open_line:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._open_line = False
            self._last_print = -float("inf")
        self.out.write(message + "\n")
        self.out.flush()

    def close(self) -> None:
        """End the status line on a terminal (call before printing the result)."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


# ------------------------------------------------------------------------------------------ Ctrl-C
@contextmanager
def sigint_cancels(command: str, stream: TextIO | None = None) -> Iterator[CancelToken]:
    """A :class:`CancelToken` that the first Ctrl-C sets; a second Ctrl-C raises :class:`KeyboardInterrupt`.

    The previous SIGINT handler is restored on exit. Off the main thread (where signals cannot be
    handled) the token is still given, and Ctrl-C keeps its usual meaning.
    """
    token = CancelToken()

    def on_sigint(signum: int, frame: Any) -> None:
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        print(f"sscce {command}: stopping at the next check (Ctrl-C again to stop at once)",
              file=stream or sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield token
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------------------ errors
def one_line(text: str) -> str:
    """``text`` on one line (its lines joined by "; ")."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_error(exc: BaseException) -> str:
    """What went wrong, naming the file where the exception knows it (``<file>: <problem>``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return one_line(exc.args[0])  # str(KeyError) adds quotes
    text = one_line(str(exc))
    if isinstance(exc, (UserError, FileNotFoundError, ValueError, OSError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def exit_code_for(exc: BaseException) -> int:
    """:data:`EXIT_USER_ERROR` for refused inputs and options, else :data:`EXIT_FAILURE`."""
    user = (UserError, FileNotFoundError, ValueError, KeyError, OSError)
    return EXIT_USER_ERROR if isinstance(exc, user) else EXIT_FAILURE


def run_command(command: str, func: RunFunction, args: argparse.Namespace, cancel: CancelToken,
                debug: bool = False, stream: TextIO | None = None) -> int:
    """Run a subcommand; every failure becomes one line on stderr and a non-zero exit status.

    Returns the function's exit status; :data:`EXIT_CANCELLED` when the run was cancelled or interrupted,
    :data:`EXIT_USER_ERROR` for a refused input or option, :data:`EXIT_FAILURE` for anything else. With
    ``debug`` the traceback is printed before the line.
    """
    err = stream or sys.stderr
    try:
        return int(func(args, cancel) or 0)
    except Cancelled:
        if debug:
            traceback.print_exc(file=err)
        print(f"sscce {command}: cancelled; nothing unfinished was kept", file=err)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc(file=err)
        print(f"sscce {command}: interrupted", file=err)
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - the one error surface (RecursionError, MemoryError too)
        if debug:
            traceback.print_exc(file=err)
        hint = "" if debug or exit_code_for(exc) == EXIT_USER_ERROR else " (--debug shows the traceback)"
        print(f"sscce {command}: {describe_error(exc)}{hint}", file=err)
        return exit_code_for(exc)
