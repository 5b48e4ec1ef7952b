"""Datasets on disk: folder layouts, splits and lazy loading of cases.

Four layouts are recognised by :func:`open_dataset`:

napari-sscce workspace
    a folder with ``manifest.json`` (:mod:`napari_sscce.workspace`): the cases and their files are the
    ones the manifest names (never a listing of the folders, which may hold a crashed write's orphans),
    optional ``splits.json``.

``images/ + labels/``
    ``images/<case>.<ext>``, optional ``labels/<case>.<ext>`` (cases without one are unlabeled),
    optional ``masks/<case>.<ext>`` (1 where a person confirmed the label), optional ``splits.json``.
MSD / nnU-Net
    ``imagesTr/<case>[_0000].<ext>`` with ``labelsTr/<case>.<ext>``, optional ``imagesTs/`` (test
    cases, no labels; kept out of the ``unlabeled`` split unless ``splits.json`` lists them).
    Only channel ``_0000`` is used (napari-sscce models are mono-modal).
LA h5
    ``<ID>.h5`` or ``<ID>/mri_norm2.h5`` files with ``image`` and ``label`` datasets, optional
    ``train.list`` / ``test.list`` (one ID a line) and ``splits.json``.

Construction only lists paths; volumes are read by :meth:`VolumeDataset.load_case`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_sscce.io.channels import read_multichannel
from napari_sscce.io.errors import VolumeError
from napari_sscce.io.readers import SUFFIX_FORMATS, read_image_label, read_volume
from napari_sscce.io.validate import check_image, check_labels, check_pair
from napari_sscce.io.volume import Volume

SPLIT_NAMES = ("labeled", "unlabeled", "val", "test")
LA_FILE = "mri_norm2.h5"
_CHANNEL_SUFFIX = "_0000"


@dataclass(frozen=True)
class Case:
    """One case of a dataset: where its files are (nothing is read).

    ``label_path`` is None for unlabeled cases; for LA h5 cases it is the h5 file itself (its
    ``label`` dataset). ``subset`` is ``"train"`` or ``"test"`` (``imagesTs``, ``test.list``).
    """

    name: str
    image_path: Path
    label_path: Path | None = None
    mask_path: Path | None = None
    subset: str = "train"
    #: names of the image's channels when the dataset records them (a workspace manifest); else read
    channel_names: tuple[str, ...] = ()

    @property
    def is_labeled(self) -> bool:
        """True when the case has a label file."""
        return self.label_path is not None


class VolumeDataset:
    """A lazily loaded dataset: a list of :class:`Case` plus optional named splits.

    Parameters
    ----------
    root : pathlib.Path
        Dataset folder.
    cases : list of Case
        The cases, in a stable order.
    layout : str
        ``"images_labels"``, ``"msd"`` or ``"la_h5"``.
    splits : dict, optional
        Split name -> case names, from ``splits.json``.
    """

    def __init__(self, root: Path, cases: list[Case], layout: str,
                 splits: dict[str, list[str]] | None = None) -> None:
        self.root = Path(root)
        self.cases = list(cases)
        self.layout = layout
        self.splits = splits
        self._by_name = {c.name: c for c in self.cases}
        if splits:
            unknown = sorted({n for names in splits.values() for n in names} - set(self._by_name))
            if unknown:
                raise VolumeError(self.root / "splits.json",
                                  f"lists {len(unknown)} cases that are not in the dataset: {_some(unknown)}")

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __repr__(self) -> str:
        return f"VolumeDataset({str(self.root)!r}, layout={self.layout!r}, cases={len(self)})"

    def case(self, name_or_index: str | int) -> Case:
        """Return a case by name or position."""
        if isinstance(name_or_index, int):
            return self.cases[name_or_index]
        try:
            return self._by_name[name_or_index]
        except KeyError:
            raise KeyError(f"{self.root}: no case named {name_or_index!r}") from None

    def split(self, name: str) -> list[Case]:
        """Cases of a split: ``"labeled"``, ``"unlabeled"``, ``"val"`` or ``"test"``.

        With ``splits.json`` its lists are used (a split it lacks is empty). Without it, training
        cases with a label are ``labeled``, those without are ``unlabeled``, ``val`` is empty and
        ``test`` holds ``imagesTs`` / ``test.list`` cases.
        """
        if name not in SPLIT_NAMES and not (self.splits and name in self.splits):
            raise ValueError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
        if self.splits is not None and (name in self.splits or name != "test"):
            return [self._by_name[n] for n in self.splits.get(name, [])]
        if name == "test":
            return [c for c in self.cases if c.subset == "test"]
        train = [c for c in self.cases if c.subset == "train"]
        if name == "labeled":
            return [c for c in train if c.is_labeled]
        if name == "unlabeled":
            return [c for c in train if not c.is_labeled]
        return []

    def load_case(
        self, name_or_index: str | int, *, check: bool = True
    ) -> tuple[Volume, Volume | None, Volume | None]:
        """Read one case: ``(image, label or None, mask or None)``.

        Images may have several channels (a 4D NIfTI, or nnU-Net's ``case_0000``, ``case_0001``, ... files:
        see :mod:`napari_sscce.io.channels`); labels and masks are 3D. With ``check`` (default) the image
        is checked for NaN / Inf, labels and mask for integer non-negative values and for lying on the
        image's grid; problems raise :class:`VolumeError`.
        """
        case = self.case(name_or_index)
        if self.layout == "la_h5":
            image, label = read_image_label(case.image_path)
        else:
            image = read_multichannel(case.image_path, is_label=False)  # 3D scans read as before
            if case.channel_names and image.num_channels == len(case.channel_names) > 1:
                image.channel_names = tuple(case.channel_names)
            label = read_volume(case.label_path, is_label=True) if case.label_path else None
        mask = read_volume(case.mask_path, is_label=True) if case.mask_path else None
        if check:
            check_image(image)
            for other in (label, mask):
                if other is not None:
                    check_labels(other)
                    check_pair(image, other)
        return image, label, mask


def open_dataset(folder: str | os.PathLike) -> VolumeDataset:
    """Recognise a dataset folder's layout and list its cases (no volume is read).

    Raises
    ------
    VolumeError
        Unknown layouts, label or mask files without an image, MSD images without a label,
        case lists naming missing files, bad ``splits.json``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VolumeError(root, "is not a folder")
    splits_path = root / "splits.json"
    splits = load_splits(splits_path) if splits_path.is_file() else None
    if (root / "manifest.json").is_file():
        return VolumeDataset(root, _workspace_cases(root), "workspace", splits)
    if (root / "images").is_dir():
        return VolumeDataset(root, _images_labels_cases(root), "images_labels", splits)
    if (root / "imagesTr").is_dir():
        return VolumeDataset(root, _msd_cases(root), "msd", splits)
    la_cases = _la_cases(root)
    if la_cases:
        return VolumeDataset(root, la_cases, "la_h5", splits)
    found = sorted(p.name for p in root.iterdir())[:10]
    raise VolumeError(
        root,
        "is not a dataset folder: expected images/ (+ labels/), imagesTr/ + labelsTr/, or LA .h5 files "
        f"(<ID>.h5 or <ID>/{LA_FILE}); it holds {found}",
    )


def load_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a ``splits.json`` file: ``{"labeled": [...], "unlabeled": [...], "val": [...]}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VolumeError(path, f"is not a readable JSON splits file ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in data.values()
    ):
        raise VolumeError(path, 'must map split names to lists of case names, e.g. {"labeled": ["case_000"]}')
    return data


def volume_stem(path: Path) -> str | None:
    """File name without its volume extension, or None for files that are not volumes."""
    name = path.name
    if name.startswith(".") or not path.is_file():
        return None
    for suffix in SUFFIX_FORMATS:
        if name.lower().endswith(suffix) and suffix != ".dcm":
            return name[: -len(suffix)]
    return None


def _volume_files(folder: Path, strip_channel: bool = False) -> dict[str, Path]:
    """Map case name -> file for the volume files of a folder (``_0000`` channels only if asked)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        stem = volume_stem(path)
        if stem is None:
            continue
        if strip_channel and stem[-5:-4] == "_" and stem[-4:].isdigit():
            if stem[-5:] != _CHANNEL_SUFFIX:
                continue  # other modalities of a multi-channel case
            stem = stem[:-5]
        if stem in out:
            raise VolumeError(folder, f"holds two files for case {stem!r}: {out[stem].name} and {path.name}")
        out[stem] = path
    return out


def _unpaired(folder: Path, names: list[str], what: str) -> VolumeError:
    return VolumeError(folder, f"has {len(names)} {what} without a matching image: {_some(names)}")


def _some(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _images_labels_cases(root: Path) -> list[Case]:
    images = _volume_files(root / "images", strip_channel=True)
    labels = _volume_files(root / "labels")
    masks = _volume_files(root / "masks")
    extras = ((root / "labels", labels, "label files"), (root / "masks", masks, "mask files"))
    for folder, files, what in extras:
        orphans = sorted(set(files) - set(images))
        if orphans:
            raise _unpaired(folder, [files[n].name for n in orphans], what)
    if not images:
        raise VolumeError(root / "images", "holds no volume files")
    return [Case(n, p, labels.get(n), masks.get(n)) for n, p in images.items()]


def _workspace_cases(root: Path) -> list[Case]:
    """The cases a workspace manifest names, with their (checked to stay inside) file paths."""
    from napari_sscce.workspace import WorkspaceError, inside, manifest_cases

    where = root / "manifest.json"
    try:
        entries = manifest_cases(root) or []
        cases = [
            Case(e.name, inside(root, e.image, where),
                 inside(root, e.label, where) if e.label else None,
                 inside(root, e.mask, where) if e.mask else None,
                 channel_names=tuple(e.channels))
            for e in entries
        ]
    except WorkspaceError as exc:
        raise VolumeError(where, str(exc)) from None
    if not cases:
        raise VolumeError(where, "names no case: add a case to the workspace first")
    return cases


def _msd_cases(root: Path) -> list[Case]:
    images = _volume_files(root / "imagesTr", strip_channel=True)
    labels = _volume_files(root / "labelsTr")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise _unpaired(root / "labelsTr", [labels[n].name for n in orphans], "label files")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise VolumeError(root / "imagesTr", f"has {len(missing)} training images without a label in "
                                             f"labelsTr/: {_some([images[n].name for n in missing])}")
    cases = [Case(n, p, labels[n]) for n, p in images.items()]
    test_labels = _volume_files(root / "labelsTs")
    tests = _volume_files(root / "imagesTs", strip_channel=True)
    cases += [Case(n, p, test_labels.get(n), subset="test") for n, p in tests.items()]
    return cases


def _la_cases(root: Path) -> list[Case]:
    files = {p.stem: p for p in sorted(root.glob("*.h5"))}
    files.update({p.parent.name: p for p in sorted(root.glob(f"*/{LA_FILE}"))})
    lists = {subset: root / f"{subset}.list" for subset in ("train", "test")}
    listed = {s: _read_list(p) for s, p in lists.items() if p.is_file()}
    if not listed:
        return [Case(n, p, p) for n, p in sorted(files.items())]
    cases = []
    for subset, ids in listed.items():
        missing = [i for i in ids if i not in files]
        if missing:
            raise VolumeError(lists[subset], f"names {len(missing)} cases with no <ID>.h5 or "
                                             f"<ID>/{LA_FILE} file: {_some(missing)}")
        cases += [Case(i, files[i], files[i], subset=subset) for i in ids]
    return cases


def _read_list(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines()]
    # UA-MT's lists sometimes hold paths like "<ID>/mri_norm2.h5"
    return [i.replace(f"/{LA_FILE}", "").removesuffix(".h5") for i in ids if i]
