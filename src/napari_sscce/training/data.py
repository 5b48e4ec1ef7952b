"""Which cases train, which validate: splits from a dataset folder, a ``splits.json`` or ``labeled: N``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Splits:
    """Case names of the three roles."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        return {"labeled": list(self.labeled), "unlabeled": list(self.unlabeled), "val": list(self.val)}


def resolve_splits(dataset: Any, split_file: str | None = None, labeled: int | None = None) -> Splits:
    """Labeled / unlabeled / val case names for training.

    Parameters
    ----------
    dataset : VolumeDataset
        From ``io.datasets.open_dataset``.
    split_file : str, optional
        A ``splits.json`` overriding the dataset's own split.
    labeled : int, optional
        Keep only the first N labeled cases labeled; the other labeled cases join the front of the
        unlabeled list (their labels are not used).

    Raises
    ------
    ValueError
        A split naming a case the dataset lacks, no labeled case, ``labeled`` larger than the labeled
        list, or a case in two roles.
    """
    if split_file:
        from napari_sscce.io.datasets import load_splits

        raw = load_splits(split_file)
        names = {k: list(raw.get(k, [])) for k in ("labeled", "unlabeled", "val")}
        where = str(split_file)
    else:
        names = {k: [c.name for c in dataset.split(k)] for k in ("labeled", "unlabeled", "val")}
        where = str(getattr(dataset, "root", "the dataset"))
    known = {c.name for c in dataset.cases}
    for role, cases in names.items():
        missing = [n for n in cases if n not in known]
        if missing:
            raise ValueError(f"{where}: {role} split names unknown case(s) {missing[:5]}")
    if labeled is not None:
        if labeled < 1 or labeled > len(names["labeled"]):
            raise ValueError(
                f"{where}: asked for {labeled} labeled case(s) but the split has {len(names['labeled'])}"
            )
        extra = names["labeled"][labeled:]
        names["labeled"] = names["labeled"][:labeled]
        names["unlabeled"] = extra + names["unlabeled"]
    if not names["labeled"]:
        raise ValueError(f"{where}: no labeled case to train on")
    seen: dict[str, str] = {}
    for role, cases in names.items():
        for n in cases:
            if n in seen:
                raise ValueError(f"{where}: case {n!r} is both {seen[n]} and {role}")
            seen[n] = role
    return Splits(names["labeled"], names["unlabeled"], names["val"])


def infer_num_classes(labels: list[np.ndarray]) -> int:
    """``max label + 1`` over the labeled cases (at least 2)."""
    top = max((int(np.max(a)) for a in labels if a.size), default=1)
    return max(2, top + 1)
