"""Who owns a run folder (``TrainConfig.out``), and what a new, resumed or overwriting run may do with it.

Rules (issue 12):

* A folder that holds a run's files (:data:`RUN_FILES`) is refused unless the run resumes it
  (``resume=True``, ``sscce train --resume``) or explicitly replaces it (``overwrite=True``,
  ``sscce train --overwrite``, which deletes those files first). Other files in the folder are left alone
  (``benchmarks/semi_supervised.py`` keeps its split file there).
* While a run owns the folder it holds ``.sscce-run.lock`` (a ``filelock.FileLock``); a second run on the
  same folder, in this process or another, fails at once with a :class:`RunFolderError` instead of
  mixing its files with the first one's.
* When a run starts, the temporary files of :mod:`napari_sscce.atomic` that a killed run left in the folder
  (half-written checkpoints, a few MB each) are deleted: the lock guarantees nobody is writing them.
* ``metrics.jsonl`` may end in a half-written line after a kill; resuming drops it
  (:func:`truncate_metrics`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from napari_sscce.atomic import atomic_write_bytes, remove_stale_temporaries

__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolderError", "claim_run_folder", "truncate_metrics"]

#: files a training run writes to its folder (see ``training.loop``)
RUN_FILES = ("config.json", "splits.json", "metrics.jsonl", "last.safetensors", "best.safetensors",
             "train_state.pt")
LOCK_NAME = ".sscce-run.lock"


class RunFolderError(ValueError):
    """A run folder cannot be used as asked; the message names the folder and what to do."""


@contextlib.contextmanager
def claim_run_folder(
    out: str | Path, *, resume: bool = False, overwrite: bool = False, main: bool = True
) -> Iterator[dict[str, int]]:
    """Own ``out`` for the duration of a run (see the module docstring).

    Parameters
    ----------
    out : path-like
        The run folder (created when missing).
    resume : bool
        The run continues the one in ``out``: its files are kept.
    overwrite : bool
        Delete the files of the run in ``out`` and start afresh.
    main : bool
        False for the non-zero ranks of a distributed run: rank 0 holds the lock and cleans up.

    Yields
    ------
    dict
        ``{"temporaries": n, "bytes": size}`` removed at the start.

    Raises
    ------
    RunFolderError
        When another run holds the folder, or it holds a run and neither ``resume`` nor ``overwrite``
        was given.
    """
    out = Path(out)
    if not main:
        if not resume and not overwrite:
            _refuse_existing_run(out)
        yield {"temporaries": 0, "bytes": 0}
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderError(
            f"{out}: another training run is using this folder (it holds {out / LOCK_NAME}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        removed, size = remove_stale_temporaries(out)
        if not resume:
            if overwrite:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
            else:
                _refuse_existing_run(out)
        yield {"temporaries": removed, "bytes": size}
    finally:
        lock.release()


def _refuse_existing_run(out: Path) -> None:
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise RunFolderError(
            f"{out} already holds a training run ({', '.join(found)}); use --resume to continue it, "
            "--overwrite to replace it (resume=True / overwrite=True in TrainConfig), or choose an empty "
            "folder"
        )


def truncate_metrics(path: Path, resume_from: int | None) -> None:
    """Prepare ``metrics.jsonl`` for a run: empty for a new run; for a resumed one keep lines up to
    ``resume_from`` and drop a half-written last line (a run killed while writing it).

    Raises
    ------
    RunFolderError
        When a line other than the last one is not JSON (the file was damaged otherwise).
    """
    if resume_from is None:
        atomic_write_bytes(path, b"")
        return
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # half-written by a killed run
            raise RunFolderError(f"{path}: line {i + 1} is not JSON; the metrics log is damaged") from None
        if isinstance(record, dict) and record.get("iteration", 0) <= resume_from:
            kept.append(line)
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
