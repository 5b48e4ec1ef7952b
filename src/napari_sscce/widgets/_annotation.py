"""Which parts of a segmentation a person has confirmed: the annotation mask of a corrected case.

:class:`AnnotationTracker` listens to a Labels layer's ``paint`` event (napari >= 0.5 sends the history atoms
of each brush stroke, fill or polygon: the changed indices) and records

- the edited voxels, and
- the touched planes: a 2D edit (brush, fill in a slice) lies in one plane across the axis the person was
  looking along (the viewer's non-displayed axis); that plane is recorded.

The mask written to the workspace depends on the mode:

``"slices"`` (default)
    every touched plane counts as fully checked: a person who corrected a slice has looked at all of it, so
    its unchanged voxels are confirmed too (this is how slice-wise annotation tools and sparse-annotation
    training treat an edited slice). Edits that span several planes (a 3D fill) add only their voxels.
``"voxels"``
    only the voxels whose label changed.
``"volume"``
    the whole volume (the person checked everything).

Replacing the layer's data (a new segmentation) clears the record; "Mark slice as checked" adds a plane
without an edit. Nothing here imports Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MODES = ("slices", "voxels", "volume")
DEFAULT_MODE = "slices"


def _atom_voxels(atom: Any, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The changed voxels of one history atom as ``(bounding box, boolean mask inside it)``."""
    slice_key = getattr(atom, "slice_key", None)
    if slice_key is not None:  # napari >= 0.7: _MaskedPaintAtom(slice_key, mask, old_values, new_value)
        box = tuple(slice_key)
        sub_shape = tuple(len(range(*s.indices(n))) for s, n in zip(box, shape, strict=True))
        mask = atom.mask if atom.mask is not None else np.ones(sub_shape, dtype=bool)
        return box, np.asarray(mask, dtype=bool)
    try:  # napari 0.5 / 0.6: (indices, old_values, new_values)
        indices = tuple(np.asarray(i, dtype=np.intp) for i in atom[0])
    except (TypeError, IndexError):
        return None
    if not indices or indices[0].size == 0:
        return None
    lo = [int(i.min()) for i in indices]
    hi = [int(i.max()) + 1 for i in indices]
    mask = np.zeros([h - low for low, h in zip(lo, hi, strict=True)], dtype=bool)
    mask[tuple(i - low for i, low in zip(indices, lo, strict=True))] = True
    return tuple(slice(low, h) for low, h in zip(lo, hi, strict=True)), mask


class AnnotationTracker:
    """Record a person's edits of a 3D Labels layer.

    Parameters
    ----------
    layer : napari.layers.Labels
        The segmentation being corrected (3D).
    plane_axis : callable, optional
        Returns the data axis the person looks along (the non-displayed axis of a 2D view); default 0 (z).
    on_change : callable, optional
        Called after every change of the record (to update counts in a widget).
    """

    def __init__(
        self,
        layer: Any,
        plane_axis: Callable[[], int] | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.layer = layer
        self.plane_axis = plane_axis or (lambda: 0)
        self.on_change = on_change
        self.shape = tuple(np.asarray(layer.data).shape)
        self.edited = np.zeros(self.shape, dtype=bool)
        self.planes: set[tuple[int, int]] = set()
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)

    def detach(self) -> None:
        """Stop listening to the layer."""
        self.layer.events.paint.disconnect(self._on_paint)
        self.layer.events.data.disconnect(self._on_data)

    def reset(self) -> None:
        """Forget every edit (e.g. after a new segmentation or after saving)."""
        self.shape = tuple(np.asarray(self.layer.data).shape)
        self.edited = np.zeros(self.shape, dtype=bool)
        self.planes = set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _on_data(self, event: Any = None) -> None:
        self.reset()

    def _on_paint(self, event: Any) -> None:
        self.record(event.value)

    def record(self, atoms: Any) -> None:
        """Record the history atoms of one edit (the ``value`` of a Labels ``paint`` event)."""
        axis = int(self.plane_axis())
        for atom in atoms:
            found = _atom_voxels(atom, self.shape)
            if found is None:
                continue
            box, mask = found
            self.edited[box] |= mask
            start, stop, _ = box[axis].indices(self.shape[axis])
            if stop - start == 1:  # a 2D edit: the plane it lies in
                self.planes.add((axis, start))
        self._changed()

    def mark_plane(self, axis: int, index: int) -> None:
        """Record plane ``index`` across ``axis`` as checked without an edit."""
        if not 0 <= index < self.shape[axis]:
            raise IndexError(f"plane {index} is outside axis {axis} of size {self.shape[axis]}")
        self.planes.add((int(axis), int(index)))
        self._changed()

    @property
    def edited_voxels(self) -> int:
        """Number of voxels whose label was changed."""
        return int(self.edited.sum())

    @property
    def has_edits(self) -> bool:
        """Whether anything was edited or marked."""
        return bool(self.planes) or bool(self.edited.any())

    def mask(self, mode: str = DEFAULT_MODE) -> np.ndarray:
        """The annotation mask (uint8, 1 = confirmed) for ``mode`` (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"unknown annotation mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "volume":
            return np.ones(self.shape, dtype=np.uint8)
        out = self.edited.copy()
        if mode == "slices":
            for axis, index in self.planes:
                key = [slice(None)] * len(self.shape)
                key[axis] = index
                out[tuple(key)] = True
        return out.astype(np.uint8)
