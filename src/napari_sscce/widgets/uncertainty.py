"""The Uncertainty dock widget: where to look first, and which scan to correct next.

Three tables:

- *volumes*: every open image that has ``<image> entropy`` and ``<image> segmentation`` layers, ranked by
  :func:`napari_sscce.uncertainty.volume_score` (active learning: correct the most uncertain scan first);
- *regions*: the uncertain regions of the chosen image from :func:`napari_sscce.uncertainty.rank_regions`,
  ordered by the number of wrong voxels each is expected to hold (rank, expected errors, size, mean
  uncertainty, classes). Choosing a row (or Next / Previous) moves the view there: the slider to the
  region's slice, the camera centre to its centre in world coordinates (the layer's scale and translate
  applied) and a zoom that shows the region with room around it;
- *slices to check next*: the slices (along the first axis) that hold the most expected errors
  (:func:`napari_sscce.uncertainty.rank_slices`); choosing one moves the slider there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_sscce.uncertainty import Region, SliceScore, rank_regions, rank_slices, volume_score
from napari_sscce.uncertainty.maps import binary_reading
from napari_sscce.widgets._layers import (
    ENTROPY,
    KL,
    NUM_CLASSES_KEY,
    SEGMENTATION,
    find_result_layer,
    images_with_uncertainty,
)
from napari_sscce.widgets._scroll import set_scrolling_layout
from napari_sscce.widgets._sections import Section

#: a region fills about this fraction of the canvas after a jump
REGION_FILL = 0.4
#: ... but the view always spans at least this fraction of the scan (context around a small region: no
#: 19x zoom onto a few voxels)
MIN_CONTEXT = 0.3
MAX_REGIONS = 50
#: rows of the "slices to check next" table
MAX_SLICES = 10


def _entropy_of(layer: Any) -> np.ndarray:
    """An entropy layer's data read as a binary entropy (:func:`~napari_sscce.uncertainty.maps.binary_reading`
    with the model's number of classes the layer records), as the ranking expects."""
    return binary_reading(np.asarray(layer.data), layer.metadata.get(NUM_CLASSES_KEY))


def region_world_box(layer: Any, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates of a region's centre and the size of its bounding box (per axis)."""
    centre = np.asarray(layer.data_to_world(np.asarray(region.centroid, dtype=float)), dtype=float)
    lo = np.asarray(region.bbox[:3], dtype=float)
    hi = np.asarray(region.bbox[3:], dtype=float)
    size = np.abs(np.asarray(layer.data_to_world(hi), float) - np.asarray(layer.data_to_world(lo), float))
    return centre, size


def go_to_region(viewer: Any, layer: Any, region: Region) -> None:
    """Move the viewer's slider, camera centre and zoom to ``region`` of ``layer``'s data."""
    centre, size = region_world_box(layer, region)
    ndim = viewer.dims.ndim
    offset = ndim - centre.size  # extra leading viewer dimensions (other layers) keep their position
    axes = list(range(offset, ndim))
    not_displayed = [a for a in axes if a not in viewer.dims.displayed]
    if not_displayed:
        viewer.dims.set_point(not_displayed, [centre[a - offset] for a in not_displayed])
    displayed = [a for a in viewer.dims.displayed if a >= offset]
    viewer.camera.center = tuple(centre[a - offset] for a in displayed)
    extent = max(float(max(size[a - offset] for a in displayed)), 1e-6)
    scan = np.abs(np.asarray(layer.data_to_world(np.asarray(layer.data.shape, float)), float)
                  - np.asarray(layer.data_to_world(np.zeros(layer.data.ndim)), float))
    extent = max(extent, MIN_CONTEXT * REGION_FILL * float(max(scan[a - offset] for a in displayed)))
    canvas = getattr(viewer, "canvas", None)
    canvas_size = canvas.size if canvas is not None else getattr(viewer, "_canvas_size", (600, 800))
    viewer.camera.zoom = REGION_FILL * float(min(canvas_size)) / extent


#: rows the scan and slice tables show before they scroll (the regions table takes the rest of the dock)
VOLUME_ROWS, SLICE_ROWS = 4, 6


def fit_rows(table: QTableWidget, most: int) -> None:
    """Make ``table`` as tall as its header and rows (one empty row at least, ``most`` at most; then it
    scrolls), so a short table leaves no blank space and its header stays in view."""
    rows = min(max(table.rowCount(), 1), most)
    row_height = table.verticalHeader().defaultSectionSize()
    scroll = table.horizontalScrollBar().sizeHint().height()
    header = table.horizontalHeader().sizeHint().height()
    height = header + rows * row_height + 2 * table.frameWidth() + scroll
    table.setFixedHeight(height)


class UncertaintyWidget(QWidget):
    """Ranked uncertain regions and volumes, with navigation.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.regions: list[Region] = []
        self.slices: list[SliceScore] = []
        self.image_name: str | None = None
        self._scores: list[tuple[str, float]] = []

        self.volume_table = QTableWidget(0, 2, self)
        self.volume_table.setHorizontalHeaderLabels(["image", "score"])
        self.region_table = QTableWidget(0, 6, self)
        self.region_table.setHorizontalHeaderLabels(
            ["#", "expected errors", "voxels", "mm³", "uncertainty", "classes"]
        )
        self.slice_table = QTableWidget(0, 2, self)
        self.slice_table.setHorizontalHeaderLabels(["slice", "expected errors"])
        for table in (self.volume_table, self.region_table, self.slice_table):
            table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
            table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
            table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            table.verticalHeader().setVisible(False)
            header = table.horizontalHeader()
            header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)  # columns fit their text
            header.setStretchLastSection(True)
            table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # a narrow dock scrolls
            table.setWordWrap(False)
        self.region_table.setMinimumHeight(160)
        fit_rows(self.volume_table, VOLUME_ROWS)
        fit_rows(self.slice_table, SLICE_ROWS)
        self.refresh_button = QPushButton("Refresh", self)
        self.prev_button = QPushButton("◀ Previous", self)
        self.next_button = QPushButton("Next ▶", self)
        self.status = QLabel("Segment an image to see its uncertain regions.", self)
        self.status.setWordWrap(True)

        self.sections = {
            "volumes": Section("Correct next (most uncertain scan first)", True, self),
            "regions": Section("Uncertain regions (most expected errors first)", True, self),
            "slices": Section("Slices to check next (most expected errors first)", True, self),
        }
        self.sections["volumes"].add_full(self.volume_table)
        self.sections["regions"].add_full(self.region_table)
        self.sections["slices"].add_full(self.slice_table)
        layout = QVBoxLayout()
        for section in self.sections.values():
            layout.addWidget(section)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        nav.addWidget(self.refresh_button)
        layout.addLayout(nav)
        layout.addWidget(self.status)
        set_scrolling_layout(self, layout)

        self.refresh_button.clicked.connect(lambda: self.refresh())
        self.next_button.clicked.connect(lambda: self.step(1))
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.volume_table.itemSelectionChanged.connect(self._on_volume_selected)
        self.region_table.itemSelectionChanged.connect(self._on_region_selected)
        self.slice_table.itemSelectionChanged.connect(self._on_slice_selected)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        napari_viewer.layers.events.removed.connect(self._on_layers_changed)
        self.refresh()

    # ----------------------------------------------------------------------------------------- volumes
    def refresh(self, image_name: str | None = None) -> None:
        """Recompute the volume scores and the regions of ``image_name`` (default: the current or best)."""
        self._scores = []
        for name in images_with_uncertainty(self.viewer):
            entropy = _entropy_of(find_result_layer(self.viewer, name, ENTROPY))
            kl_layer = find_result_layer(self.viewer, name, KL)
            labels = find_result_layer(self.viewer, name, SEGMENTATION).data
            score = volume_score(
                entropy,
                None if kl_layer is None else np.asarray(kl_layer.data),
                np.asarray(labels),
            )
            self._scores.append((name, float(score)))
        self._scores.sort(key=lambda item: -item[1])
        names = [n for n, _ in self._scores]
        chosen = image_name or (
            self.image_name if self.image_name in names else (names[0] if names else None)
        )
        self.volume_table.blockSignals(True)
        self.volume_table.setRowCount(len(self._scores))
        fit_rows(self.volume_table, VOLUME_ROWS)
        for row, (name, score) in enumerate(self._scores):
            self.volume_table.setItem(row, 0, QTableWidgetItem(name))
            self.volume_table.setItem(row, 1, QTableWidgetItem(f"{score:.3f}"))
        if chosen in names:
            self.volume_table.selectRow(names.index(chosen))
        self.volume_table.blockSignals(False)
        self.show_regions(chosen)

    @property
    def volume_scores(self) -> list[tuple[str, float]]:
        """``(image name, score)``, most uncertain first."""
        return list(self._scores)

    def _on_volume_selected(self) -> None:
        rows = {i.row() for i in self.volume_table.selectedIndexes()}
        if rows:
            self.show_regions(self._scores[min(rows)][0])

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and layer.metadata.get("sscce_role") == ENTROPY:
            layer.events.data.connect(lambda e: self.refresh())
        self.refresh()

    # ----------------------------------------------------------------------------------------- regions
    def show_regions(self, image_name: str | None) -> None:
        """Rank and list the uncertain regions of ``image_name``."""
        self.image_name = image_name
        self.regions = []
        self.slices = []
        if image_name is not None:
            ent_layer = find_result_layer(self.viewer, image_name, ENTROPY)
            kl_layer = find_result_layer(self.viewer, image_name, KL)
            seg_layer = find_result_layer(self.viewer, image_name, SEGMENTATION)
            spacing = tuple(float(s) for s in ent_layer.scale[-3:])
            entropy = _entropy_of(ent_layer)
            self.regions = rank_regions(
                entropy,
                None if kl_layer is None else np.asarray(kl_layer.data),
                np.asarray(seg_layer.data),
                spacing,
                max_regions=MAX_REGIONS,
            )
            self.slices = rank_slices(
                entropy,
                None if kl_layer is None else np.asarray(kl_layer.data),
                np.asarray(seg_layer.data),
                axis=0,
                top=MAX_SLICES,
            )
        self.region_table.blockSignals(True)
        self.region_table.clearSelection()
        self.region_table.setRowCount(len(self.regions))
        for row, region in enumerate(self.regions):
            classes = ", ".join(str(c) for c in region.classes if c != 0) or "background"
            values = (
                str(region.id),
                f"{region.score:.0f}",
                str(region.size_voxels),
                f"{region.volume_mm3:.1f}",
                f"{region.mean_uncertainty:.2f}",
                classes,
            )
            for col, text in enumerate(values):
                self.region_table.setItem(row, col, QTableWidgetItem(text))
        self.region_table.blockSignals(False)
        self._fill_slices()
        if image_name is None:
            self.status.setText("Segment an image to see its uncertain regions.")
        elif not self.regions:
            self.status.setText(f"{image_name}: no uncertain region above the threshold.")
        else:
            self.status.setText(
                f"{image_name}: {len(self.regions)} uncertain regions; click one to go there."
            )

    def select_region(self, index: int) -> None:
        """Select row ``index`` and move the view to that region."""
        if not self.regions:
            return
        index = int(np.clip(index, 0, len(self.regions) - 1))
        self.region_table.selectRow(index)  # triggers _on_region_selected
        if self.current_index() != index:
            self._go(index)

    def current_index(self) -> int | None:
        """Row of the selected region, or ``None``."""
        rows = {i.row() for i in self.region_table.selectedIndexes()}
        return min(rows) if rows else None

    def step(self, delta: int) -> None:
        """Go to the next (``delta = 1``) or previous (``-1``) region."""
        current = self.current_index()
        self.select_region(0 if current is None else current + delta)

    def _on_region_selected(self) -> None:
        index = self.current_index()
        if index is not None:
            self._go(index)

    def _go(self, index: int) -> None:
        layer = find_result_layer(self.viewer, self.image_name, ENTROPY) if self.image_name else None
        if layer is None:
            return
        region = self.regions[index]
        go_to_region(self.viewer, layer, region)
        z, y, x = (int(round(c)) for c in region.centroid)
        z = self._slider_step(0, z)
        self.status.setText(
            f"region {region.id}: slice {z}, centre (y {y}, x {x}), {region.size_voxels} voxels, "
            f"mean uncertainty {region.mean_uncertainty:.2f}"
        )

    def _slider_step(self, axis: int, fallback: int) -> int:
        """The slice number the viewer's slider shows for data ``axis`` (the status says the same)."""
        dims = self.viewer.dims
        offset = dims.ndim - 3
        try:
            return int(dims.current_step[offset + axis])
        except (IndexError, TypeError):
            return fallback

    # ----------------------------------------------------------------------------------------- slices
    def _fill_slices(self) -> None:
        self.slice_table.blockSignals(True)
        self.slice_table.clearSelection()
        self.slice_table.setRowCount(len(self.slices))
        fit_rows(self.slice_table, SLICE_ROWS)
        for row, item in enumerate(self.slices):
            self.slice_table.setItem(row, 0, QTableWidgetItem(str(item.index)))
            self.slice_table.setItem(row, 1, QTableWidgetItem(f"{item.score:.0f}"))
        self.slice_table.blockSignals(False)

    def select_slice(self, index: int) -> None:
        """Select row ``index`` of the slice table and move the slider to that slice."""
        if not self.slices:
            return
        index = int(np.clip(index, 0, len(self.slices) - 1))
        self.slice_table.selectRow(index)  # triggers _on_slice_selected

    def _on_slice_selected(self) -> None:
        rows = {i.row() for i in self.slice_table.selectedIndexes()}
        layer = find_result_layer(self.viewer, self.image_name, ENTROPY) if self.image_name else None
        if not rows or layer is None:
            return
        item = self.slices[min(rows)]
        centre = np.asarray(layer.data.shape, dtype=float) / 2.0
        centre[item.axis] = item.index
        world = np.asarray(layer.data_to_world(centre), dtype=float)
        offset = self.viewer.dims.ndim - world.size
        self.viewer.dims.set_point(offset + item.axis, world[item.axis])
        step = self._slider_step(item.axis, item.index)
        self.status.setText(f"slice {step}: about {item.score:.0f} wrong voxels expected")
