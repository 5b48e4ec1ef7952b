"""The Correct & fine-tune dock widget: corrections become training data, the model learns from them.

The loop it closes:

1. the person corrects ``<image> segmentation`` with napari's label tools; the widget records what was edited
   (:class:`~._annotation.AnnotationTracker`; by default an edited slice counts as fully checked) and can mark
   the current slice as checked without an edit;
2. "Add to labeled set" writes the image, the corrected labels and the annotation mask to a workspace folder
   (:class:`napari_sscce.workspace.Workspace`, atomic writes);
3. "Fine-tune" trains (:func:`napari_sscce.training.loop.train`) from the model in use on the workspace's
   labeled set plus the other open images as unlabeled data, with a progress bar, a live loss / Dice curve and
   Cancel (a cancelled run adds nothing: the model in use stays);
4. the new model becomes a new workspace version (older ones are kept; "Revert" goes back) and the image is
   segmented again so that the change shows.

Settings come from :class:`~napari_sscce.training.config.TrainConfig` (one source of truth) except the few
that only make sense for a short interactive fine-tune, listed in :data:`FINETUNE_OVERRIDES`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

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
from napari_sscce.models.dual import METHOD_NETWORKS
from napari_sscce.progress import ProgressEvent
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import TrainResult, train
from napari_sscce.widgets._annotation import DEFAULT_MODE, MODES, AnnotationTracker
from napari_sscce.widgets._layers import (
    CASE_KEY,
    ROLE_KEY,
    SEGMENTATION,
    find_result_layer,
    show_prediction,
    volume_from_layer,
)
from napari_sscce.widgets._plot import CurvePlot
from napari_sscce.widgets._state import load_settings, session_for, update_settings
from napari_sscce.widgets._worker import WorkRunner, describe_event
from napari_sscce.widgets.segment import ImageLayerCombo, image_layers
from napari_sscce.workspace import Workspace, safe_case_name

#: TrainConfig fields a short interactive fine-tune sets differently from a full training run: a few hundred
#: steps instead of 6000 (minutes on a CPU, not hours) and no periodic validation (the workspace has no
#: validation split while a person builds it; the last model is kept).
#: a short fine-tune: the step schedule scaled to 100 iterations would cut the rate tenfold at iteration 42
FINETUNE_OVERRIDES: dict[str, Any] = {"iterations": 100, "val_every": 0, "schedule": "poly"}
METHOD_CHOICES = ("cce", "ugmcl", "supervised")
DEFAULT_WORKSPACE = Path.home() / "napari-sscce-workspace"
MODE_LABELS = {"slices": "edited slices", "voxels": "edited voxels", "volume": "whole volume"}


def compatible_methods(checkpoint_method: str | None) -> list[str]:
    """Methods that can continue training a model made by ``checkpoint_method`` (same pair of networks)."""
    if checkpoint_method not in METHOD_NETWORKS:
        return list(METHOD_CHOICES)
    nets = METHOD_NETWORKS[checkpoint_method]
    return [m for m in METHOD_CHOICES if METHOD_NETWORKS.get(m) == nets]


def build_finetune_config(
    workspace: Workspace,
    model_metadata: dict[str, Any],
    method: str,
    iterations: int,
    out: str | Path,
    **changes: Any,
) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tune on a workspace, starting from a model with ``model_metadata``.

    TrainConfig defaults, then :data:`FINETUNE_OVERRIDES`, then what the model fixes (patch size,
    intensity normalisation, classes), then ``method`` / ``iterations`` / ``out`` and ``changes``. Without
    unlabeled cases the batches hold labeled rows only.
    """
    data = workspace.dataset_folder()
    values: dict[str, Any] = {
        **FINETUNE_OVERRIDES,
        "data": str(data),
        "method": method,
        "iterations": int(iterations),
        "out": str(out),
    }
    if model_metadata.get("patch_size"):
        values["patch_size"] = tuple(int(v) for v in model_metadata["patch_size"])
    norm = model_metadata.get("normalization")
    if isinstance(norm, dict) and norm.get("mode"):
        values["normalization"] = norm["mode"]
    if model_metadata.get("num_classes"):
        values["num_classes"] = int(model_metadata["num_classes"])
    if model_metadata.get("class_names"):
        values["class_names"] = list(model_metadata["class_names"])
    if not any(not c.labeled for c in workspace.cases):
        values["unlabeled_bs"] = 0
    values.update(changes)
    return TrainConfig(**values)


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
        self.last_result: TrainResult | None = None
        self._stage = ""
        self._target: Any = None
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
        self.method_combo.addItems(list(METHOD_CHOICES))
        self.method_combo.setCurrentText(defaults.method)
        self.iterations_spin = QSpinBox(self)
        self.iterations_spin.setRange(1, 100_000)
        self.iterations_spin.setValue(int(FINETUNE_OVERRIDES["iterations"]))
        self.finetune_button = QPushButton("Fine-tune", self)
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
        run_row.addWidget(self.cancel_button)
        version_row = QHBoxLayout()
        version_row.addWidget(QLabel("model version", self))
        version_row.addWidget(self.version_combo, 1)
        version_row.addWidget(self.revert_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.counts)
        layout.addWidget(self.mark_button)
        layout.addWidget(self.add_button)
        layout.addLayout(run_row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot)
        layout.addLayout(version_row)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.image_combo.currentTextChanged.connect(lambda _: self._attach_tracker())
        napari_viewer.layers.events.inserted.connect(lambda e: self._attach_tracker())
        napari_viewer.layers.events.removed.connect(lambda e: self._attach_tracker())
        self.mode_combo.currentIndexChanged.connect(lambda _: self._update_counts())
        self.mark_button.clicked.connect(lambda: self.mark_current_slice())
        self.workspace_button.clicked.connect(self._choose_workspace)
        self.workspace_edit.editingFinished.connect(self._workspace_edited)
        self.add_button.clicked.connect(lambda: self.add_to_labeled_set())
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.revert_button.clicked.connect(lambda: self.revert())
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.failed.connect(self._on_failed)
        self.session.model_changed.connect(lambda _: self._refresh_versions())

        self._attach_tracker()
        self._refresh_versions()

    # ------------------------------------------------------------------------------------- annotation
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
            mask = image.with_array(self.tracker.mask(self.mode), is_label=True)
            ws = self.workspace()
            case = layer.metadata.get(CASE_KEY)  # set when this layer was added before: update that case
            known = case in {c.name for c in ws.cases}
            name = ws.add_case(image, labels, mask, name=case if known else layer.name, update=known)
            layer.metadata[CASE_KEY] = name
        except (ValueError, OSError) as exc:
            self.status.setText(f"could not add to the labeled set: {exc}")
            return None
        self.status.setText(
            f"added {name} to {ws.folder} ({len(ws.labeled_cases)} labeled case(s); "
            f"{100 * ws.case(name).confirmed_fraction:.1f} % of its voxels confirmed)"
        )
        return name

    # --------------------------------------------------------------------------------------- fine-tune
    def _model_metadata(self, path: Path) -> dict[str, Any]:
        from napari_sscce.models.checkpoint import read_checkpoint_metadata

        return read_checkpoint_metadata(path)

    def finetune(self) -> None:
        """Fine-tune the model in use on the workspace, in the background; segments again at the end."""
        try:
            ws = self.workspace()
        except (ValueError, OSError) as exc:
            self.status.setText(str(exc))
            return
        model = self.session.model_path or ws.current_model_path
        if model is None:
            self.status.setText("Choose a model in the Segment widget first.")
            return
        if self.tracker is not None and self.tracker.has_edits:
            if self.add_to_labeled_set() is None:
                return
            ws.reload()
        if not ws.labeled_cases:
            self.status.setText("The labeled set is empty: correct a segmentation and add it first.")
            return
        try:
            meta = self._model_metadata(model)
        except (ValueError, OSError) as exc:
            self.status.setText(str(exc))
            return
        method = self.method_combo.currentText()
        if method not in compatible_methods(meta.get("method")):
            self.status.setText(
                f"a {meta.get('method')} model cannot be fine-tuned with {method}; choose one of "
                f"{', '.join(compatible_methods(meta.get('method')))}"
            )
            return
        if (
            ws.current_model_path is None
            or Path(model).resolve().parent.parent != (ws.folder / "models").resolve()
        ):
            ws.add_model_version(model, {"note": "model before fine-tuning"}, meta.get("val_metrics") or {})
            model = ws.current_model_path
        self._add_unlabeled(ws)
        out = ws.folder / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
        config = build_finetune_config(ws, meta, method, self.iterations_spin.value(), out)
        self._target = self.image_combo.layer()
        self._stage = "train"
        self._set_running(True)
        self.plot.clear()
        self.status.setText(
            f"fine-tuning {model.parent.name} with {method} for {config.iterations} iterations …"
        )
        self.runner.start(train, config, init_checkpoint=str(model))

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
        self.runner.start(predict_volume, str(model), volume_from_layer(layer), InferenceConfig())

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
        self.status.setText(f"reverted to model {version}; segmenting again …")
        self._resegment(path)

    def _refresh_versions(self) -> None:
        self.version_combo.clear()
        try:
            ws = self.workspace()
        except (ValueError, OSError):
            return
        for v in reversed(ws.versions):
            dice = v.metrics.get("best_val_dice") or v.metrics.get("dice")
            text = f"{v.version}  {v.info.get('method', '')}  {v.created[:16]}"
            if isinstance(dice, (int, float)):
                text += f"  Dice {dice:.3f}"
            if v.version == ws.current_version:
                text += "  (in use)"
            self.version_combo.addItem(text, v.version)

    # ----------------------------------------------------------------------------------------- worker
    def _set_running(self, running: bool) -> None:
        for button in (self.finetune_button, self.add_button, self.revert_button):
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
        if self._stage == "train":
            self._train_finished(result)
        else:
            self._set_running(False)
            layer = self._target
            if layer is not None and layer in self.viewer.layers:
                show_prediction(self.viewer, layer, result)
                self.status.setText(
                    f"{self.status.text()}\n{layer.name} segmented again with the model in use."
                )
            self._stage = ""

    def _train_finished(self, result: TrainResult) -> None:
        self.last_result = result
        if result.cancelled:
            self._set_running(False)
            self._stage = ""
            self.status.setText(
                f"cancelled after {result.iterations} iterations; the model in use is unchanged "
                f"(the partial run is in {result.last_path.parent if result.last_path else 'the run folder'})"
            )
            return
        ws = self.workspace()
        path = result.best_path or result.last_path
        info = {
            "method": self.method_combo.currentText(),
            "iterations": result.iterations,
            "run": str(path.parent),
            "labeled_cases": [c.name for c in ws.labeled_cases],
        }
        metrics = {"best_val_dice": result.best_metric} if result.best_metric is not None else {}
        version = ws.add_model_version(path, info, metrics)
        self.session.set_model(ws.current_model_path)
        self._refresh_versions()
        self.status.setText(f"new model {version} ({result.iterations} iterations); segmenting again …")
        self._resegment(ws.current_model_path)

    def _on_cancelled(self) -> None:
        self._set_running(False)
        self._stage = ""
        self.status.setText("cancelled; the model in use is unchanged")

    def _on_failed(self, exc: Exception) -> None:
        self._set_running(False)
        self.status.setText(f"{self._stage or 'task'} failed: {exc}")
        self._stage = ""
