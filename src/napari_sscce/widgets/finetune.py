"""The Correct & fine-tune dock widget: corrections become training data, the model learns from them.

The loop it closes:

1. the person corrects ``<image> segmentation`` with napari's label tools; the widget records what was edited
   (:class:`~._annotation.AnnotationTracker`; by default an edited slice counts as fully checked) and can mark
   the current slice as checked without an edit;
2. "Add to labeled set" writes the image, the corrected labels and the annotation mask to a workspace folder
   (:class:`napari_sscce.workspace.Workspace`, atomic writes);
3. "Fine-tune" runs the headless fine-tune (:func:`napari_sscce.loop.run_finetune`: the model's
   own settings, replay of its labeled set or distillation from the starting model, held-aside scoring)
   from the model in use on the
   workspace's labeled set plus the other open images as unlabeled data, with a progress bar, a live loss
   curve and Cancel (a cancelled run adds nothing: the model in use stays); "Train new model" trains a first
   model from scratch the same way (cold start);
4. the new model becomes a new workspace version (older ones are kept; "Revert" goes back); it is made current
   only when it scores at least as well as the starting model on the held-aside slices (both figures are
   shown), and the image is segmented again with the Segment widget's settings, keeping every confirmed
   voxel of the corrections (:func:`~napari_sscce.loop.merge_prediction`).

The rules (settings inherited from the model, compatible methods, versions) live in
:mod:`napari_sscce.loop`; this widget only gathers the inputs and shows the outcome.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import predict_volume
from napari_sscce.loop import (
    COLD_START,
    FINETUNE_OVERRIDES,
    FinetuneResult,
    build_finetune_config,
    finetune_method,
    merge_prediction,
    run_finetune,
)
from napari_sscce.loop.preview import DEFAULT_SECONDS as PREVIEW_SECONDS
from napari_sscce.loop.preview import preview_update
from napari_sscce.methods import check_compatible, method_label, method_names
from napari_sscce.models.checkpoint import read_checkpoint_metadata
from napari_sscce.models.matching import check_classes_match, workspace_labels_classes
from napari_sscce.progress import ProgressEvent
from napari_sscce.widgets._annotation import DEFAULT_MODE, MODES, AnnotationTracker
from napari_sscce.widgets._close_guard import CloseGuard
from napari_sscce.widgets._layers import (
    CASE_KEY,
    ROLE_KEY,
    SEGMENTATION,
    layer_kind,
    result_name,
    show_prediction,
    volume_from_layer,
)
from napari_sscce.widgets._messages import explain_error
from napari_sscce.widgets._plot import CurvePlot
from napari_sscce.widgets._scroll import set_scrolling_layout
from napari_sscce.widgets._sections import Section, align_labels
from napari_sscce.widgets._state import (
    load_settings,
    model_label,
    predict_with_session,
    session_for,
    update_settings,
)
from napari_sscce.widgets._worker import WorkRunner, describe_event
from napari_sscce.widgets.segment import ImageLayerCombo, image_layers, model_volume
from napari_sscce.workspace import Workspace, safe_case_name

#: what the loop benchmark measured about the method choice (README "Does the loop pay?")
METHOD_TIP = (
    "Training method. Automatic: a fine-tune uses Supervised where it can continue the model, a new model "
    "CCE. "
    "Measured on hippocampus (benchmarks/results/loop.md, 2 seeds, 8 to 32 corrected slices): fine-tuning "
    "with Supervised scored 0.6 to 1.0 Dice points above CCE at every budget and took half the time; CCE "
    "uses the workspace's unlabeled scans."
)
#: the method list's first entry: the loop chooses (:func:`napari_sscce.loop.finetune_method`, COLD_START)
AUTO_METHOD = ("Automatic (supervised fine-tune, CCE new model)", "")

__all__ = ["FINETUNE_OVERRIDES", "FinetuneWidget", "build_finetune_config", "method_choices"]

DEFAULT_WORKSPACE = Path.home() / "napari-sscce-workspace"
#: the time budget a new model is planned for, minutes
DEFAULT_BUDGET_MINUTES = 10.0
CLASSES_TIP = (
    "The classes of your labels, background first, comma separated (label 0, 1, 2, ...). They are confirmed "
    "for the workspace when you add the first case or train a new model, fix how many classes it has, and "
    "are stored in a new model."
)
BUDGET_TIP = (
    "How long a new model may train on this machine. A short timing probe measures one training step, "
    "then the spacing, patch, width and number of steps are fitted to this budget; the plan and its "
    "estimate ('about N min on this CPU') are shown before training starts."
)
MODE_LABELS = {"slices": "edited slices", "voxels": "edited voxels", "volume": "whole volume"}


def method_choices() -> list[tuple[str, str]]:
    """``(label, name)`` of every registered training method, for the method list."""
    return [(method_label(name), name) for name in method_names()]


def duration_text(seconds: float) -> str:
    """``"40 s"`` below a minute and a half, else ``"12 min"``."""
    return f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def parse_class_names(text: str) -> list[str]:
    """Class names from ``"background, atrium"`` (comma separated; blanks dropped)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def proposed_class_names(top_label: int, model_names: list[str] | None = None) -> list[str]:
    """Names to propose for labels whose largest value is ``top_label``: the model's names when it has
    exactly that many classes, else ``background, class 1, ...`` (at least two)."""
    count = max(int(top_label) + 1, 2)
    if model_names and len(model_names) == count:
        return [str(n) for n in model_names]
    return ["background"] + [f"class {i}" for i in range(1, count)]


def on_grid_of(labels: Any, image: Any) -> bool:
    """Whether Labels layer ``labels`` lies voxel for voxel on image layer ``image`` (shape and scale)."""
    if labels.ndim != image.ndim or tuple(np.shape(labels.data)) != tuple(np.shape(image.data)):
        return False
    return bool(np.allclose(labels.scale, image.scale, rtol=1e-3))


def labels_layers_on(viewer: Any, image: Any) -> list[Any]:
    """The viewer's Labels layers on ``image``'s grid (any name: painted from scratch or segmented)."""
    return [layer for layer in viewer.layers if layer_kind(layer) == "labels" and on_grid_of(layer, image)]


class FinetuneWidget(QWidget):
    """Correct a segmentation (or paint one), add it to a labeled set and fine-tune or train a model on it.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.runner = WorkRunner(self)
        self._init_state()
        self._build_annotation_controls()
        self._build_workspace_controls()
        self._build_training_controls()
        self._build_layout()
        self._connect()
        self._refresh_labels()
        self._refresh_versions()
        self.close_guard = CloseGuard(napari_viewer, self._busy_text, self._close_while_running, self)

    # -------------------------------------------------------------------------------------- building
    def _init_state(self) -> None:
        self.tracker: AnnotationTracker | None = None
        self.last_result: FinetuneResult | None = None
        self._stage = ""
        self._target: Any = None
        self._keep: tuple[np.ndarray, np.ndarray] | None = None  # corrections to keep: (labels, mask)
        self._case_names: dict[str, str] = {}  # layer name -> workspace case name
        self._message = ""  # what the last training or revert did, shown above the re-segmentation line
        self._closing = False  # the window is closing: results are dropped, nothing is adopted
        self._run_folder: Path | None = None  # the running fine-tune's run folder (removed when cancelled)
        self._previous_version: str | None = None  # the workspace's current version when the run started
        self._classes_typed = False  # the person typed class names: the field is no longer filled in
        self._clock: tuple[float, int] | None = None  # (time, step) of the first training step seen
        self._plan_shown = False
        self._offered: set[str] = set()  # the Labels layers listed at the last refresh

    def _build_annotation_controls(self) -> None:
        self.image_combo = ImageLayerCombo(self.viewer, self)
        self.labels_combo = QComboBox(self)
        self.labels_combo.setToolTip(
            "The Labels layer holding your segmentation: any Labels layer on the image's grid (the Segment "
            "widget's result, or one you painted from scratch with the layer list's new-labels button)"
        )
        self.counts = QLabel(self)
        self.counts.setWordWrap(True)
        self.mode_combo = QComboBox(self)
        for mode in MODES:
            self.mode_combo.addItem(MODE_LABELS[mode], mode)
        self.mode_combo.setCurrentIndex(MODES.index(DEFAULT_MODE))
        self.mode_combo.setToolTip(
            "What counts as confirmed: every slice you edited or marked (default), only the voxels you "
            "changed, or the whole volume"
        )
        self.mark_button = QPushButton("Mark slice as checked", self)

    def _build_workspace_controls(self) -> None:
        self.workspace_edit = QLineEdit(str(load_settings().get("workspace", DEFAULT_WORKSPACE)), self)
        self.workspace_button = QPushButton("…", self)
        self.workspace_button.setMaximumWidth(32)
        self.classes_edit = QLineEdit(self)
        self.classes_edit.setPlaceholderText("background, atrium")
        self.classes_edit.setToolTip(CLASSES_TIP)
        self.add_button = QPushButton("Add to labeled set", self)

    def _build_training_controls(self) -> None:
        self.method_combo = QComboBox(self)
        for label, name in [AUTO_METHOD, *method_choices()]:
            self.method_combo.addItem(label, name)
        self.method_combo.setCurrentIndex(0)
        self.method_combo.setToolTip(METHOD_TIP)
        self.iterations_spin = QSpinBox(self)
        self.iterations_spin.setRange(1, 100_000)
        self.iterations_spin.setValue(int(FINETUNE_OVERRIDES["iterations"]))
        self.iterations_spin.setToolTip("Training steps of a fine-tune (the starting model's settings stay)")
        self.finetune_button = QPushButton("Fine-tune", self)
        self.preview_button = QPushButton("Update preview", self)
        self.preview_button.setToolTip(
            f"Adapt a copy of the model in use to these corrections for about {PREVIEW_SECONDS:g} s and show "
            "the scan segmented by it, your corrections kept. Nothing is saved; shown only when it scores at "
            "least as well as the model in use on a quarter of your corrected slices held aside. Fine-tune "
            "to make a new model version."
        )
        self.budget_spin = QDoubleSpinBox(self)
        self.budget_spin.setRange(0.5, 600.0)
        self.budget_spin.setDecimals(1)
        self.budget_spin.setSingleStep(1.0)
        self.budget_spin.setSuffix(" min")
        self.budget_spin.setValue(DEFAULT_BUDGET_MINUTES)
        self.budget_spin.setToolTip(BUDGET_TIP)
        self.new_button = QPushButton("Train new model", self)
        self.new_button.setToolTip(
            "Train a first model from scratch on the workspace's labeled cases with the method above "
            f"(default {COLD_START['method']}): a short timing probe measures a training step here, then "
            "spacing, patch and iterations are fitted to the time budget; the plan is shown before training"
        )
        self.plan_label = QLabel("", self)
        self.plan_label.setWordWrap(True)
        self.score_label = QLabel("", self)
        self.score_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 100)
        self.plot = CurvePlot(self)
        self.version_combo = QComboBox(self)
        self.revert_button = QPushButton("Revert", self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)

    def _build_layout(self) -> None:
        self.sections = {
            "corrections": Section("Corrections", True, self),
            "labeled set": Section("Labeled set", True, self),
            "training": Section("Training (the method applies to both)", True, self),
            "progress": Section("Progress", True, self),
            "versions": Section("Model versions", False, self),
        }
        s = self.sections
        s["corrections"].add_row("image", self.image_combo)
        s["corrections"].add_row("labels", self.labels_combo)
        s["corrections"].add_row("confirmed", self.mode_combo)
        s["corrections"].add_full(self.counts)
        s["corrections"].add_full(self.mark_button)
        ws_row = QHBoxLayout()
        ws_row.addWidget(self.workspace_edit, 1)
        ws_row.addWidget(self.workspace_button)
        s["labeled set"].add_row("workspace", ws_row)
        s["labeled set"].add_row("classes", self.classes_edit)
        s["labeled set"].add_full(self.add_button)
        s["training"].add_row("method", self.method_combo)
        s["training"].add_row("steps", self.iterations_spin)
        s["training"].add_full(self.preview_button)
        s["training"].add_full(self.finetune_button)
        s["training"].add_row("time budget", self.budget_spin)
        s["training"].add_full(self.new_button)
        s["progress"].add_full(self.plan_label)
        run_row = QHBoxLayout()
        run_row.addWidget(self.progress_bar, 1)
        run_row.addWidget(self.cancel_button)
        s["progress"].add_full(run_row)
        s["progress"].add_full(self.plot)
        s["progress"].add_full(self.score_label)
        version_row = QHBoxLayout()
        version_row.addWidget(self.version_combo, 1)
        version_row.addWidget(self.revert_button)
        s["versions"].add_row("version", version_row)
        layout = QVBoxLayout()
        for section in s.values():
            layout.addWidget(section)
        layout.addWidget(self.status)
        layout.addStretch(1)
        align_labels(list(s.values()))
        set_scrolling_layout(self, layout)

    def _connect(self) -> None:
        self.image_combo.currentTextChanged.connect(lambda _: self._refresh_labels())
        self.labels_combo.currentIndexChanged.connect(lambda _: self._attach_tracker())
        self.viewer.layers.events.inserted.connect(lambda e: self._refresh_labels())
        self.viewer.layers.events.removed.connect(lambda e: self._refresh_labels())
        self.mode_combo.currentIndexChanged.connect(lambda _: self._update_counts())
        self.mark_button.clicked.connect(lambda: self.mark_current_slice())
        self.workspace_button.clicked.connect(self._choose_workspace)
        self.workspace_edit.editingFinished.connect(self._workspace_edited)
        self.classes_edit.textEdited.connect(lambda _: setattr(self, "_classes_typed", True))
        self.add_button.clicked.connect(lambda: self.add_to_labeled_set())
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.preview_button.clicked.connect(lambda: self.update_preview())
        self.new_button.clicked.connect(lambda: self.train_new_model())
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.revert_button.clicked.connect(lambda: self.revert())
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.failed.connect(self._on_failed)
        self.session.model_changed.connect(lambda _: self._refresh_versions())

    # ------------------------------------------------------------------------------------- annotation
    @property
    def method(self) -> str | None:
        """The training method chosen (registry name), or None: automatic (the loop chooses)."""
        return str(self.method_combo.currentData()) or None

    @property
    def mode(self) -> str:
        """The annotation mode (``"slices"``, ``"voxels"`` or ``"volume"``)."""
        return str(self.mode_combo.currentData())

    def segmentation_layer(self) -> Any | None:
        """The Labels layer chosen for the image (any Labels layer on its grid; no naming rule)."""
        name = self.labels_combo.currentData()
        if not name or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        image = self.image_combo.layer()
        return layer if image is not None and on_grid_of(layer, image) else None

    def _refresh_labels(self) -> None:
        """List the Labels layers on the chosen image's grid; keep the choice unless the image just got a
        segmentation (then that one), else prefer its segmentation, else the first."""
        image = self.image_combo.layer()
        current = self.labels_combo.currentData()
        names = [] if image is None else [lab.name for lab in labels_layers_on(self.viewer, image)]
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        for name in names:
            self.labels_combo.addItem(name, name)
        own = result_name(image.name, SEGMENTATION) if image is not None else None
        if own in names and own not in self._offered:  # a new segmentation of the image: correct that
            current = own
        self._offered = set(names)
        choice = current if current in names else own if own in names else (names[0] if names else None)
        if choice is not None:
            self.labels_combo.setCurrentIndex(names.index(choice))
        self.labels_combo.blockSignals(False)
        self._attach_tracker()
        self._fill_classes()

    def _plane_axis(self) -> int:
        dims = self.viewer.dims
        hidden = list(dims.not_displayed)
        return int(hidden[-1] - (dims.ndim - 3)) if hidden and dims.ndisplay == 2 else 0

    def _attach_tracker(self) -> None:
        seg = self.segmentation_layer()
        if self.tracker is not None and self.tracker.layer is seg:
            return
        if self.tracker is not None:
            try:
                self.tracker.detach()
            except (TypeError, ValueError, RuntimeError):
                pass
            self.tracker = None
        if seg is not None:
            self.tracker = AnnotationTracker(seg, self._plane_axis, self._update_counts)
        self._update_counts()

    def _update_counts(self) -> None:
        if self.tracker is None:
            self.counts.setText(
                "Segment the image (Segment widget) and correct it with the label tools, or add a Labels "
                "layer (the layer list's new-labels button) and paint a few slices."
            )
            return
        axis_planes = sorted({i for a, i in self.tracker.planes})
        confirmed = int(self.tracker.mask(self.mode).sum())
        self.counts.setText(
            f"edited voxels: {self.tracker.edited_voxels}; checked slices: {len(self.tracker.planes)}"
            + (
                f" ({', '.join(map(str, axis_planes[:8]))}{' …' if len(axis_planes) > 8 else ''})"
                if axis_planes
                else ""
            )
            + f"; confirmed voxels: {confirmed}"
        )

    def mark_current_slice(self) -> None:
        """Record the slice on screen as checked."""
        seg = self.segmentation_layer()
        if self.tracker is None or seg is None:
            self.status.setText("No segmentation to mark.")
            return
        axis = self._plane_axis()
        point = seg.world_to_data(self.viewer.dims.point)
        index = int(round(float(point[axis])))
        try:
            self.tracker.mark_plane(axis, index)
        except IndexError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText(f"slice {index} marked as checked")

    # ---------------------------------------------------------------------------------------- classes
    def class_names(self) -> list[str]:
        """The class names in the classes field (comma separated, background first)."""
        return parse_class_names(self.classes_edit.text())

    def _fill_classes(self) -> None:
        """Show the workspace's confirmed classes (fixed), or propose names from the labels' values."""
        ws = self._open_quietly()
        confirmed = ws.class_names if ws is not None else None
        self.classes_edit.setReadOnly(bool(confirmed))
        if confirmed:
            self.classes_edit.setText(", ".join(confirmed))
            self.classes_edit.setToolTip(f"The classes confirmed for this workspace: {', '.join(confirmed)}")
            return
        self.classes_edit.setToolTip(CLASSES_TIP)
        if self._classes_typed:
            return
        seg = self.segmentation_layer()
        top = int(np.max(seg.data)) if seg is not None and np.size(seg.data) else 1
        model_names = None
        if self.session.model_path is not None:
            try:
                model_names = read_checkpoint_metadata(self.session.model_path).get("class_names")
            except (ValueError, OSError):
                model_names = None
        self.classes_edit.setText(", ".join(proposed_class_names(top, model_names)))

    def _confirm_classes(self, ws: Workspace) -> list[str] | None:
        """The workspace's classes; the first time, the names in the field become its confirmed classes."""
        if ws.class_names:
            return ws.class_names
        if not self._classes_typed:
            self._fill_classes()  # the labels painted since the field was filled
        try:
            ws.confirm_classes(self.class_names())
        except (ValueError, OSError) as exc:
            self.status.setText(f"classes: {explain_error(exc, ws.folder)}")
            return None
        self._fill_classes()
        return ws.class_names

    # -------------------------------------------------------------------------------------- workspace
    def set_workspace(self, folder: str | Path) -> None:
        """Use (and remember) ``folder`` as the workspace."""
        self.workspace_edit.setText(str(folder))
        self._workspace_edited()

    def _workspace_edited(self) -> None:
        update_settings(workspace=self.workspace_edit.text())
        self._refresh_versions()
        self._fill_classes()

    def _choose_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Workspace folder", self.workspace_edit.text())
        if folder:
            self.set_workspace(folder)

    def workspace(self) -> Workspace:
        """The workspace named in the folder field (created when missing)."""
        text = self.workspace_edit.text().strip()
        if not text:
            raise ValueError("choose a workspace folder first")
        return Workspace(text)

    def _open_workspace(self) -> Workspace | None:
        """The workspace, or None with a sentence on the status line (read-only, full disk, ...); what
        opening found and left alone (:attr:`~napari_sscce.workspace.Workspace.notes`) is said too."""
        try:
            ws = self.workspace()
        except (ValueError, OSError) as exc:
            self.status.setText(explain_error(exc, self.workspace_edit.text().strip() or None))
            return None
        if ws.notes:
            self.status.setText("note: " + "; ".join(ws.notes))
        return ws

    def _open_quietly(self) -> Workspace | None:
        """The workspace when it already exists and opens; None otherwise (nothing created, nothing said)."""
        text = self.workspace_edit.text().strip()
        if not text or not (Path(text).expanduser() / "manifest.json").is_file():
            return None
        try:
            return Workspace(text, cleanup=False)
        except (ValueError, OSError):
            return None

    def add_to_labeled_set(self) -> str | None:
        """Write the image, its corrected segmentation and the annotation mask to the workspace.

        The first case added confirms the workspace's classes (the classes field).
        """
        layer = self.image_combo.layer()
        seg = self.segmentation_layer()
        if layer is None or seg is None or self.tracker is None:
            self.status.setText("Segment the image or paint a Labels layer on it first.")
            return None
        if self.mode != "volume" and not self.tracker.has_edits:
            self.status.setText(
                "Nothing corrected or marked yet: edit the segmentation or mark checked slices."
            )
            return None
        ws = self._open_workspace()
        if ws is None or self._confirm_classes(ws) is None:
            return None
        try:
            name = self._write_case(ws, layer, seg)
        except (ValueError, OSError) as exc:
            reason = explain_error(exc, self.workspace_edit.text())
            self.status.setText(f"could not add to the labeled set: {reason}")
            return None
        self._case_names[layer.name] = name
        self.status.setText(
            f"added {name} to {ws.folder} ({len(ws.labeled_cases)} labeled case(s); "
            f"{100 * ws.case(name).confirmed_fraction:.1f} % of its voxels confirmed)"
        )
        return name

    def _write_case(self, ws: Workspace, layer: Any, seg: Any) -> str:
        """Add (or update) the case of image ``layer`` with labels ``seg`` and the confirmed mask."""
        image = model_volume(self.viewer, layer, self.session.model_path)  # its channels, for such a model
        labels = image.with_array(np.asarray(seg.data), is_label=True)
        case = layer.metadata.get(CASE_KEY) or self._case_names.get(layer.name)
        known = case in {c.name for c in ws.cases}  # added before: update that case explicitly
        confirmed = self.tracker.mask(self.mode) > 0
        earlier = ws.load_case(case)[2] if known else None
        if earlier is not None and earlier.shape == confirmed.shape:
            confirmed |= np.asarray(earlier.array) > 0  # corrections of earlier rounds stay confirmed
        mask = image.with_array(confirmed.astype(np.uint8), is_label=True)
        name = ws.add_case(image, labels, mask, name=case if known else layer.name, update=known)
        layer.metadata[CASE_KEY] = name
        return name

    def _stored_mask(self, ws: Workspace, layer_name: str) -> np.ndarray | None:
        """The annotation mask the workspace holds for the case of ``layer_name`` (None when none)."""
        name = self._case_names.get(layer_name)
        try:
            entry = ws.case(name) if name else next(c for c in ws.cases if c.name == layer_name)
        except (KeyError, StopIteration):
            return None
        if not entry.labeled:
            return None
        mask = ws.load_case(entry.name)[2]
        return None if mask is None else np.asarray(mask.array) > 0

    # --------------------------------------------------------------------------------------- fine-tune
    def _prepare(self) -> Workspace | None:
        """Add the corrections and the other open images to the workspace; None (with a message) on error."""
        ws = self._open_workspace()
        if ws is None:
            return None
        if self.tracker is not None and self.tracker.has_edits:
            if self.add_to_labeled_set() is None:
                return None
            ws.reload()
        if not ws.labeled_cases:
            self.status.setText(
                "The labeled set is empty: correct a segmentation (or paint a Labels layer) and add it first."
            )
            return None
        self._add_unlabeled(ws)
        self._target = self.image_combo.layer()
        seg = self.segmentation_layer()
        mask = self._stored_mask(ws, self._target.name) if self._target is not None else None
        self._keep = (np.array(seg.data), mask) if seg is not None and mask is not None else None
        return ws

    def inference_config(self) -> InferenceConfig:
        """The Segment widget's settings (overlap, TTA, largest component, device), or the defaults."""
        provider = getattr(self.session, "inference_config", None)
        return provider() if callable(provider) else InferenceConfig()

    def finetune(self) -> None:
        """Fine-tune the model in use on the workspace, in the background; segments again at the end."""
        ws = self._open_workspace()
        if ws is None:
            return
        model = self.session.model_path or ws.current_model_path
        if model is None:
            self.status.setText(
                "Choose a model in the Segment widget first, or train a new model on the labeled set."
            )
            return
        try:
            meta = check_compatible(self.method, model) if self.method else read_checkpoint_metadata(model)
            method = self.method or finetune_method(meta)
        except (ValueError, OSError) as exc:
            self.status.setText(explain_error(exc))
            return
        if self._prepare() is None:
            return
        try:
            ws.reload()
            check_classes_match(workspace_labels_classes(ws), meta, ws.folder)  # no wrong-model fine-tune
        except (ValueError, OSError) as exc:
            self.status.setText(explain_error(exc, ws.folder))
            return
        steps = self.iterations_spin.value()
        self._start_training(
            f"fine-tuning {model_label(Path(model))} with {method} for {steps} iterations …",
            ws, model, method, steps,
        )

    def update_preview(self) -> None:
        """Adapt a copy of the model in use to the corrections of this scan and show its segmentation
        (:func:`napari_sscce.loop.preview.preview_update`), in the background; nothing is saved."""
        image, seg, tracker = self.image_combo.layer(), self.segmentation_layer(), self.tracker
        model = self.session.model_path
        if image is None or seg is None or model is None:
            self.status.setText("Segment a scan with a model first, then correct it and update the preview.")
            return
        mask = tracker.mask(self.mode) if tracker is not None else None
        if mask is None or not mask.any():
            self.status.setText("Correct or mark some slices first: the preview learns from them.")
            return
        try:
            volume = model_volume(self.viewer, image, model)
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        self._target, self._stage = image, "preview"
        self._saved_edits = (tracker.edited.copy(), set(tracker.planes))
        self._set_running(True)
        self.status.setText(f"adapting {model_label(Path(model))} to your corrections (about "
                            f"{PREVIEW_SECONDS:g} s) …")
        self.runner.start(preview_update, str(model), volume, np.array(seg.data), mask,
                          seconds=PREVIEW_SECONDS, inference=self.inference_config())

    def _preview_finished(self, result: Any) -> None:
        """Show the preview; the record of what the person corrected survives the new layer data."""
        self._set_running(False)
        layer = self._target
        if layer is not None and layer in self.viewer.layers:
            show_prediction(self.viewer, layer, result.prediction)
            tracker, saved = self.tracker, getattr(self, "_saved_edits", None)
            if tracker is not None and saved is not None and saved[0].shape == tracker.shape:
                tracker.edited, tracker.planes = saved[0], saved[1]
                self._update_counts()
        self.status.setText(result.message)

    def train_new_model(self, iterations: int | None = None) -> None:
        """Train a first model from scratch on the workspace (cold start), in the background; then segment.

        The classes are the workspace's confirmed ones (the classes field confirms them the first time) and
        are stored in the new model. Without ``iterations`` the training is planned to fit the time budget
        box (:func:`napari_sscce.loop.cold_start_config`); the plan is shown before the steps start.
        """
        ws = self._prepare()
        if ws is None:
            return
        names = self._confirm_classes(ws)
        if names is None:
            return
        changes: dict[str, Any] = {"num_classes": len(names), "class_names": list(names)}
        if iterations is None:
            changes["budget_seconds"] = 60.0 * float(self.budget_spin.value())
            text = (
                f"planning a new model on {len(ws.labeled_cases)} labeled case(s): measuring a training "
                f"step on this machine to fit {self.budget_spin.value():g} min …"
            )
        else:
            text = f"training a new model on {len(ws.labeled_cases)} labeled case(s) for {iterations} steps …"
        self._start_training(text, ws, None, self.method, iterations, cold_start=True, **changes)

    def _start_training(self, text: str, ws: Workspace, *args: Any, **kwargs: Any) -> None:
        self._stage = "train"
        self._set_running(True)
        self.plot.clear()
        self.score_label.setText("")
        self.plan_label.setText("")
        self._clock, self._plan_shown = None, False
        self.status.setText(text)
        self._previous_version = ws.current_version
        self._run_folder = ws.folder / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        self.runner.start(
            run_finetune, ws.folder, *args, inference=self.inference_config(), out=self._run_folder, **kwargs
        )

    # ------------------------------------------------------------------------------------------ closing
    def _busy_text(self) -> str:
        """What runs now, for the close question (empty when idle)."""
        if not self.runner.running:
            return ""
        return {"segment": "Segmenting again", "preview": "Updating the preview"}.get(self._stage, "Training")

    def _close_while_running(self, timeout_s: float = 30.0) -> None:
        """The window closes during work: cancel, wait (bounded), adopt nothing, remove the run folder."""
        self._closing = True
        self.runner.shutdown(timeout_s)
        self._discard_run()

    def _discard_run(self) -> None:
        """Remove the last training's run folder (only a real folder inside a ``runs/`` folder)."""
        run, self._run_folder = self._run_folder, None
        if run is None or run.is_symlink() or not run.is_dir() or run.parent.name != "runs":
            return
        shutil.rmtree(run, ignore_errors=True)

    def _add_unlabeled(self, ws: Workspace) -> None:
        """Other open images join the workspace as unlabeled data (once; by layer name). A multi-channel
        workspace takes none: its open layers are channels of scans, not scans."""
        if any(c.channels for c in ws.cases):
            return
        known = {c.name for c in ws.cases}
        target = self.image_combo.currentText()
        for layer in image_layers(self.viewer):
            if layer.name == target or layer.metadata.get(ROLE_KEY):
                continue
            if layer.metadata.get(CASE_KEY) in known or safe_case_name(layer.name) in known:
                continue
            try:
                layer.metadata[CASE_KEY] = ws.add_unlabeled(volume_from_layer(layer), name=layer.name)
            except (ValueError, OSError) as exc:
                reason = explain_error(exc, ws.folder)
                self.status.setText(f"skipped {layer.name} as unlabeled data: {reason}")

    def _resegment(self, model: Path) -> None:
        layer = self._target or self.image_combo.layer()
        if layer is None or layer not in self.viewer.layers:
            self._set_running(False)
            return
        self._target = layer
        self._stage = "segment"
        self._set_running(True)
        self.runner.start(
            predict_with_session, self.session, predict_volume, str(model),
            model_volume(self.viewer, layer, model),
            self.inference_config(),
        )

    def revert(self, version: str | None = None) -> None:
        """Make ``version`` (default: the one chosen in the list) the model in use and segment again."""
        version = version or self.version_combo.currentData()
        if not version:
            self.status.setText("No model version to revert to.")
            return
        try:
            path = self.workspace().revert(version)
        except KeyError as exc:
            self.status.setText(str(exc).strip("'\""))
            return
        except (ValueError, OSError) as exc:
            self.status.setText(explain_error(exc, self.workspace_edit.text()))
            return
        self.session.set_model(path)
        self._refresh_versions()
        self._message = f"reverted to model {version}"
        self.status.setText(f"{self._message}; segmenting again …")
        self._keep = None
        self._resegment(path)

    def _refresh_versions(self) -> None:
        self.version_combo.clear()
        ws = self._open_quietly()
        if ws is None:
            return
        for v in reversed(ws.versions):
            dice = v.metrics.get("held_aside_dice") or v.metrics.get("best_val_dice") or v.metrics.get("dice")
            text = f"{v.version}  {v.info.get('method', '')}  {v.created[:16]}"
            if isinstance(dice, (int, float)):
                text += f"  Dice {dice:.3f}"
            if v.version == ws.current_version:
                text += "  (in use)"
            self.version_combo.addItem(text, v.version)

    # ----------------------------------------------------------------------------------------- worker
    def _set_running(self, running: bool) -> None:
        for button in (self.finetune_button, self.preview_button, self.new_button, self.add_button,
                       self.revert_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, event: ProgressEvent) -> None:
        self.progress_bar.setValue(int(round(100 * event.fraction)))
        if event.stage == "train" and event.step == 0 and event.message and not self._plan_shown:
            self._plan_shown = True  # the run's first line says what is trained: keep it in view
            self.plan_label.setText(f"plan: {event.message}")
        if event.stage == "train" and event.step > 0 and event.total:
            self.status.setText(self._step_text(event))
        else:
            self.status.setText(describe_event(event))
        if event.stage == "train" and "loss" in event.values:
            self.plot.add_loss(event.step, event.values["loss"])
        if "val_dice" in event.values:
            self.plot.add_dice(event.step, event.values["val_dice"])

    def _step_text(self, event: ProgressEvent) -> str:
        """``"step n of N, about 3 min left"`` from the pace of the steps seen so far."""
        now = time.monotonic()
        if self._clock is None or event.step <= self._clock[1]:
            self._clock = (now, event.step)
        text = f"training: step {event.step} of {event.total}"
        start, first = self._clock
        if event.step > first:
            left = (now - start) / (event.step - first) * max(0, event.total - event.step)
            text += f", about {duration_text(left)} left"
        if "loss" in event.values:
            text += f" (loss {float(event.values['loss']):.3f})"
        return text

    def _on_finished(self, result: Any) -> None:
        if self._closing:
            if self._stage == "train":
                self._undo_adoption(result)
            self._stage = ""
            return
        if self._stage == "train":
            self._train_finished(result)
            return
        if self._stage == "preview":
            self._stage = ""
            self._preview_finished(result)
            return
        self._set_running(False)
        layer = self._target
        if layer is not None and layer in self.viewer.layers:
            keep = self._keep
            if keep is not None and keep[0].shape == result.labels.shape == keep[1].shape:
                result = merge_prediction(result, keep[0], keep[1])
            show_prediction(self.viewer, layer, result)
            kept = f" (the {int(keep[1].sum())} confirmed voxels kept)" if keep is not None else ""
            self.status.setText(f"{self._message}\n{layer.name} segmented again with the model in use{kept}.")
        self._stage = ""

    def _train_finished(self, result: FinetuneResult) -> None:
        self.last_result = result
        if result.cancelled:
            self._set_running(False)
            self._stage = ""
            self._discard_run()
            self.status.setText(result.message)
            return
        if result.current_path is not None:  # a first model kept but not used leaves the model in use
            self.session.set_model(result.current_path)
        self._refresh_versions()
        self.score_label.setText(self._score_text(result))
        self.status.setText(result.message)
        if not result.adopted:
            self._set_running(False)
            self._stage = ""
            return
        self._message = result.message
        self.status.setText(f"{result.message}; segmenting again …")
        self._resegment(result.current_path)

    def _undo_adoption(self, result: FinetuneResult) -> None:
        """A run that ended while the window closed adopts nothing: the version in use before it stays."""
        if result.cancelled or not result.adopted or not self._previous_version:
            return
        try:
            self.workspace().revert(self._previous_version)
        except (KeyError, ValueError, OSError):
            pass

    @staticmethod
    def _score_text(result: FinetuneResult) -> str:
        if result.before is None or result.after is None:
            return ""
        return (
            f"held-aside Dice ({result.held_aside_voxels} confirmed voxels not trained on): "
            f"{result.start_version} {result.before:.3f} → {result.version} {result.after:.3f}"
        )

    def _on_cancelled(self) -> None:
        self._stage = ""
        if self._closing:
            return
        self._set_running(False)
        self._discard_run()
        self.status.setText("cancelled; the model in use is unchanged")

    def _on_failed(self, exc: Exception) -> None:
        stage, self._stage = self._stage, ""
        if self._closing:
            return
        self._set_running(False)
        self.status.setText(f"{stage or 'task'} failed: {explain_error(exc)}")
