"""Keep what the model knew: find the starting model's labeled set and replay it beside the corrections.

A model trained by this project stores its data folder and split in its metadata; a workspace version stores
the set it replayed. When that set is on this machine, a share :data:`REPLAY_SHARE` of the labeled draws of a
fine-tune come from it (:func:`replay_copies` turns the share into repetitions of each case).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_sscce.workspace import Workspace, workspace_version_of

#: share of labeled draws that come from the starting model's replayed labeled set (the corrected cases keep a
#: quarter of the draws, and all their unconfirmed voxels feed the unsupervised terms); chosen by measurement,
#: benchmarks/results/finetune_gain_synthetic.md
REPLAY_SHARE = 0.6


@dataclass
class ReplaySource:
    """The starting model's labeled set: a dataset folder and the case names it trained on."""

    data: Path
    cases: list[str]
    split: str | None = None
    labeled: int | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready description stored with a workspace version (so later fine-tunes replay it too)."""
        return {
            "data": str(self.data),
            "split": self.split,
            "labeled": self.labeled,
            "cases": list(self.cases),
        }


def _candidate_folders(data: str, checkpoint: Path, run_out: str | None) -> list[Path]:
    raw = Path(data).expanduser()
    if raw.is_absolute():
        return [raw]
    bases = [Path.cwd(), checkpoint.parent, checkpoint.parent.parent]
    if run_out:
        bases += [Path(run_out).parent, Path(run_out).parent.parent]
    return [base / raw for base in bases]


def _replayable(folder: Path, split: str | None, labeled: int | None) -> tuple[Path, list[str]] | None:
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.training.data import resolve_splits

    try:
        dataset = open_dataset(folder)
    except (OSError, ValueError):
        return None
    if dataset.layout not in ("images_labels", "msd"):
        return None  # one file per image and label is needed to link cases into a view
    if split and not Path(split).is_file():
        return None
    try:
        return folder.resolve(), resolve_splits(dataset, split, labeled).labeled
    except (OSError, ValueError):
        return None


def find_replay_source(
    checkpoint: str | os.PathLike, metadata: dict[str, Any], workspace: Workspace
) -> ReplaySource | None:
    """Where the starting model's labeled set is, when it can be found on this machine.

    Looks at the workspace version record of ``checkpoint`` (``info["replay"]``) first, then at the training
    config in its metadata (``data``, ``split``, ``labeled``); a relative data folder is tried from the
    current folder, the checkpoint's folder and the run folder. The workspace itself (and folders inside it)
    is not a replay source: its cases are trained on anyway. ``None`` when nothing usable is found.
    """
    checkpoint = Path(checkpoint)
    version = workspace_version_of(checkpoint, workspace)
    recorded = version.info.get("replay") if version is not None else None
    config = metadata.get("config") or {}
    for source in (recorded, config):
        if not isinstance(source, dict) or not source.get("data"):
            continue
        for folder in _candidate_folders(str(source["data"]), checkpoint, config.get("out")):
            if not folder.is_dir() or _inside(folder, workspace.folder):
                continue
            found = _replayable(folder, source.get("split"), source.get("labeled"))
            if found:
                return ReplaySource(found[0], found[1], source.get("split"), source.get("labeled"))
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def replay_copies(n_own: int, n_replay: int, share: float, most: int = 8) -> tuple[int, int]:
    """How often to list each own and each replayed case so that replayed ones make ``share`` of the draws.

    The labeled sampler draws cases uniformly; repeating a case in the labeled list weights it. Returns the
    pair ``(own copies, replay copies)`` in ``1..most`` whose share is closest to ``share``.
    """
    pairs = [(o, r) for o in range(1, most + 1) for r in range(1, most + 1)]
    return min(pairs, key=lambda p: (abs(p[1] * n_replay / (p[1] * n_replay + p[0] * n_own) - share), sum(p)))
