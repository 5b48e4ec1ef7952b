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
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
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
    merge_prediction,
    run_finetune,
)
from napari_sscce.methods import check_compatible, method_label, method_names
from napari_sscce.models.matching import check_classes_match, workspace_labels_classes
from napari_sscce.progress import ProgressEvent
from napari_sscce.training.config import TrainConfig
from napari_sscce.widgets._annotation import DEFAULT_MODE, MODES, AnnotationTracker
from napari_sscce.widgets._close_guard import CloseGuard
from napari_sscce.widgets._layers import (
    CASE_KEY,
    ROLE_KEY,
    SEGMENTATION,
    find_result_layer,
    show_prediction,
    volume_from_layer,
)
from napari_sscce.widgets._messages import explain_error
from napari_sscce.widgets._plot import CurvePlot
from napari_sscce.widgets._scroll import set_scrolling_layout
from napari_sscce.widgets._state import (
    load_settings,
    model_label,
    predict_with_session,
    session_for,
    update_settings,
)
from napari_sscce.widgets._worker import WorkRunner, describe_event
from napari_sscce.widgets.segment import ImageLayerCombo, image_layers
from napari_sscce.workspace import Workspace, safe_case_name

#: what the loop benchmark measured about the method choice (README "Does the loop pay?")
METHOD_TIP = (
    "Training method of the fine-tune. Measured on hippocampus (benchmarks/results/loop.md, 2 seeds, 8 to 32 "
    "corrected slices): fine-tuning with Supervised scored 0.6 to 1.0 Dice points above CCE at every budget "
    "and took half the time; CCE uses the workspace's unlabeled scans."
)

__all__ = ["FINETUNE_OVERRIDES", "FinetuneWidget", "build_finetune_config", "method_choices"]

DEFAULT_WORKSPACE = Path.home() / "napari-sscce-workspace"
MODE_LABELS = {"slices": "edited slices", "voxels": "edited voxels", "volume": "whole volume"}


def method_choices() -> list[tuple[str, str]]:
    """``(label, name)`` of every registered training method, for the method list."""
    return [(method_label(name), name) for name in method_names()]


class FinetuneWidget(QWidget):
    """Correct a segmentation, add it to a labeled set and fine-tune the model on it.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.runner = WorkRunner(self)
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
        defaults = TrainConfig()

        self.image_combo = ImageLayerCombo(napari_viewer, self)
        self.counts = QLabel(self)
        self.mode_combo = QComboBox(self)
        for mode in MODES:
            self.mode_combo.addItem(MODE_LABELS[mode], mode)
        self.mode_combo.setCurrentIndex(MODES.index(DEFAULT_MODE))
        self.mode_combo.setToolTip(
            "What counts as confirmed: every slice you edited or marked (default), only the voxels you "
            "changed, or the whole volume"
        )
        self.mark_button = QPushButton("Mark slice as checked", self)
        self.workspace_edit = QLineEdit(str(load_settings().get("workspace", DEFAULT_WORKSPACE)), self)
        self.workspace_button = QPushButton("…", self)
        self.workspace_button.setMaximumWidth(32)
        self.add_button = QPushButton("Add to labeled set", self)
        self.method_combo = QComboBox(self)
        for label, name in method_choices():
            self.method_combo.addItem(label, name)
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(defaults.method)))
        self.method_combo.setToolTip(METHOD_TIP)
        self.iterations_spin = QSpinBox(self)
        self.iterations_spin.setRange(1, 100_000)
        self.iterations_spin.setValue(int(FINETUNE_OVERRIDES["iterations"]))
        self.finetune_button = QPushButton("Fine-tune", self)
        self.new_button = QPushButton("Train new model", self)
        self.new_button.setToolTip(
            f"Train a first model from scratch on the workspace's labeled cases: {COLD_START['method']}, "
            f"{COLD_START['base_filters']} filters, patch from the data, {COLD_START['iterations']} "
            "iterations"
        )
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

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("confirmed", self.mode_combo)
        ws_row = QHBoxLayout()
        ws_row.addWidget(self.workspace_edit, 1)
        ws_row.addWidget(self.workspace_button)
        form.addRow("workspace", ws_row)
        form.addRow("method", self.method_combo)
        form.addRow("iterations", self.iterations_spin)
        run_row = QHBoxLayout()
        run_row.addWidget(self.finetune_button)
        run_row.addWidget(self.new_button)
        run_row.addWidget(self.cancel_button)
        version_row = QHBoxLayout()
        version_row.addWidget(QLabel("model version", self))
        version_row.addWidget(self.version_combo, 1)
        version_row.addWidget(self.revert_button)
        layout = QVBoxLayout()
        layout.addLayout(form)
        layout.addWidget(self.counts)
        layout.addWidget(self.mark_button)
        layout.addWidget(self.add_button)
        layout.addLayout(run_row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot)
        layout.addWidget(self.score_label)
        layout.addLayout(version_row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        set_scrolling_layout(self, layout)

        self.image_combo.currentTextChanged.connect(lambda _: self._attach_tracker())
        napari_viewer.layers.events.inserted.connect(lambda e: self._attach_tracker())
        napari_viewer.layers.events.removed.connect(lambda e: self._attach_tracker())
        self.mode_combo.currentIndexChanged.connect(lambda _: self._update_counts())
        self.mark_button.clicked.connect(lambda: self.mark_current_slice())
        self.workspace_button.clicked.connect(self._choose_workspace)
        self.workspace_edit.editingFinished.connect(self._workspace_edited)
        self.add_button.clicked.connect(lambda: self.add_to_labeled_set())
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.new_button.clicked.connect(lambda: self.train_new_model())
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.revert_button.clicked.connect(lambda: self.revert())
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.failed.connect(self._on_failed)
        self.session.model_changed.connect(lambda _: self._refresh_versions())

        self._attach_tracker()
        self._refresh_versions()
        self.close_guard = CloseGuard(napari_viewer, self._busy_text, self._close_while_running, self)

    # ------------------------------------------------------------------------------------- annotation
    @property
    def method(self) -> str:
        """The training method chosen (registry name)."""
        return str(self.method_combo.currentData())

    @property
    def mode(self) -> str:
        """The annotation mode (``"slices"``, ``"voxels"`` or ``"volume"``)."""
        return str(self.mode_combo.currentData())

    def segmentation_layer(self) -> Any | None:
        """The ``<image> segmentation`` layer of the chosen image."""
        name = self.image_combo.currentText()
        return find_result_layer(self.viewer, name, SEGMENTATION) if name else None

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
                "Segment the image first (Segment widget); then correct it with the label tools."
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

    # -------------------------------------------------------------------------------------- workspace
    def set_workspace(self, folder: str | Path) -> None:
        """Use (and remember) ``folder`` as the workspace."""
        self.workspace_edit.setText(str(folder))
        self._workspace_edited()

    def _workspace_edited(self) -> None:
        update_settings(workspace=self.workspace_edit.text())
        self._refresh_versions()

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

    def add_to_labeled_set(self) -> str | None:
        """Write the image, its corrected segmentation and the annotation mask to the workspace."""
        layer = self.image_combo.layer()
        seg = self.segmentation_layer()
        if layer is None or seg is None or self.tracker is None:
            self.status.setText("Segment the image and correct it first.")
            return None
        if self.mode != "volume" and not self.tracker.has_edits:
            self.status.setText(
                "Nothing corrected or marked yet: edit the segmentation or mark checked slices."
            )
            return None
        try:
            image = volume_from_layer(layer)
            labels = image.with_array(seg.data, is_label=True)
            ws = self.workspace()
            case = layer.metadata.get(CASE_KEY) or self._case_names.get(layer.name)
            known = case in {c.name for c in ws.cases}  # added before: update that case explicitly
            confirmed = self.tracker.mask(self.mode) > 0
            earlier = ws.load_case(case)[2] if known else None
            if earlier is not None and earlier.shape == confirmed.shape:
                confirmed |= np.asarray(earlier.array) > 0  # corrections of earlier rounds stay confirmed
            mask = image.with_array(confirmed.astype(np.uint8), is_label=True)
            name = ws.add_case(image, labels, mask, name=case if known else layer.name, update=known)
            layer.metadata[CASE_KEY] = name
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
        try:
            ws = self.workspace()
        except (ValueError, OSError) as exc:
            self.status.setText(str(exc))
            return None
        if self.tracker is not None and self.tracker.has_edits:
            if self.add_to_labeled_set() is None:
                return None
            ws.reload()
        if not ws.labeled_cases:
            self.status.setText("The labeled set is empty: correct a segmentation and add it first.")
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
        try:
            ws = self.workspace()
        except (ValueError, OSError) as exc:
            self.status.setText(str(exc))
            return
        model = self.session.model_path or ws.current_model_path
        if model is None:
            self.status.setText(
                "Choose a model in the Segment widget first, or train a new model on the labeled set."
            )
            return
        try:
            meta = check_compatible(self.method, model)
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
        self._start_training(
            f"fine-tuning {model_label(Path(model))} with {self.method} for {self.iterations_spin.value()} "
            "iterations …",
            ws, model, self.method, self.iterations_spin.value(),
        )

    def train_new_model(self, iterations: int | None = None) -> None:
        """Train a first model from scratch on the workspace (cold start), in the background; then segment."""
        if self._prepare() is None:
            return
        ws = self.workspace()
        self._start_training(
            f"training a new model on {len(ws.labeled_cases)} labeled case(s) …",
            ws, None, self.method, iterations, cold_start=True,
        )

    def _start_training(self, text: str, ws: Workspace, *args: Any, **kwargs: Any) -> None:
        self._stage = "train"
        self._set_running(True)
        self.plot.clear()
        self.score_label.setText("")
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
        return "Segmenting again" if self._stage == "segment" else "Training"

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
        """Other open images join the workspace as unlabeled data (once; by layer name)."""
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
                self.status.setText(f"skipped {layer.name} as unlabeled data: {exc}")

    def _resegment(self, model: Path) -> None:
        layer = self._target or self.image_combo.layer()
        if layer is None or layer not in self.viewer.layers:
            self._set_running(False)
            return
        self._target = layer
        self._stage = "segment"
        self._set_running(True)
        self.runner.start(
            predict_with_session, self.session, predict_volume, str(model), volume_from_layer(layer),
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
        except (KeyError, ValueError, OSError) as exc:
            self.status.setText(str(exc))
            return
        self.session.set_model(path)
        self._refresh_versions()
        self._message = f"reverted to model {version}"
        self.status.setText(f"{self._message}; segmenting again …")
        self._keep = None
        self._resegment(path)

    def _refresh_versions(self) -> None:
        self.version_combo.clear()
        try:
            ws = self.workspace()
        except (ValueError, OSError):
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
        for button in (self.finetune_button, self.new_button, self.add_button, self.revert_button):
            button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, event: ProgressEvent) -> None:
        self.progress_bar.setValue(int(round(100 * event.fraction)))
        self.status.setText(describe_event(event))
        if event.stage == "train" and "loss" in event.values:
            self.plot.add_loss(event.step, event.values["loss"])
        if "val_dice" in event.values:
            self.plot.add_dice(event.step, event.values["val_dice"])

    def _on_finished(self, result: Any) -> None:
        if self._closing:
            if self._stage == "train":
                self._undo_adoption(result)
            self._stage = ""
            return
        if self._stage == "train":
            self._train_finished(result)
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
