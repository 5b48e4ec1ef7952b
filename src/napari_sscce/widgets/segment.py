"""The Segment dock widget: pick an image and a model, run the two networks, show labels and uncertainty.

Thin by design: it reads its controls into an :class:`~napari_sscce.inference.config.InferenceConfig` (whose
defaults are the controls' defaults), runs :func:`napari_sscce.inference.predict.predict_volume` in a
background thread with a progress bar and a Cancel button, and shows the result as layers on the image's grid
(``<image> segmentation``, ``<image> entropy``, ``<image> KL``; see :mod:`._layers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sscce.inference.config import DEVICES, InferenceConfig
from napari_sscce.inference.predict import Prediction, predict_volume
from napari_sscce.io.validate import apply_nan_policy
from napari_sscce.io.volume import Volume
from napari_sscce.progress import ProgressEvent
from napari_sscce.widgets._config_form import config_values, config_widgets
from napari_sscce.widgets._layers import ROLE_KEY, layer_kind, show_prediction, volume_from_layer
from napari_sscce.widgets._messages import assumed_spacing_note
from napari_sscce.widgets._scroll import set_scrolling_layout
from napari_sscce.widgets._sections import Section, align_labels
from napari_sscce.widgets._state import (
    known_models,
    model_label,
    model_summary,
    predict_with_session,
    remember_model,
    session_for,
)
from napari_sscce.widgets._worker import WorkRunner, describe_event

BROWSE = "Choose a model file…"
#: the inference options the widget shows: InferenceConfig fields with their control's options (magicgui)
OPTION_SPECS = {
    "device": {"choices": list(DEVICES)},
    "overlap": {"min": 0.0, "max": 0.95, "step": 0.05},
    "tta": {"text": "mirror test-time augmentation"},
    "largest_component": {"text": "keep largest component"},
    "return_per_network": {"text": "show each network's probabilities"},
}


def image_layers(viewer: Any) -> list[Any]:
    """The viewer's 3D image layers that are scans, not results of this plugin."""
    return [
        layer
        for layer in viewer.layers
        if layer_kind(layer) == "image" and layer.ndim == 3 and not layer.metadata.get(ROLE_KEY)
    ]


def model_channels(metadata: dict[str, Any]) -> list[str]:
    """The channel names a model expects (``[]`` for a one-channel model)."""
    names = [str(n) for n in (metadata.get("channel_names") or [])]
    count = int(metadata.get("in_channels") or len(names) or 1)
    return names if count > 1 else []


def channel_layers(viewer: Any, layer: Any, names: list[str]) -> list[Any]:
    """The image layers that are ``layer``'s scan's channels ``names``, in the model's order.

    A channel is the image layer on ``layer``'s grid (same shape, scale and translate) whose name is the
    channel's name or ends with it (``"case T1"``, ``"case_FLAIR"``; case-insensitive), ``layer`` included.

    Raises
    ------
    ValueError
        Naming the channels that have no such layer, and what to open.
    """
    grid = [c for c in image_layers(viewer)
            if np.shape(c.data) == np.shape(layer.data) and tuple(c.scale) == tuple(layer.scale)
            and tuple(c.translate) == tuple(layer.translate)]
    found, missing = [], []
    for name in names:
        wanted = name.lower()
        match = next((c for c in grid if c.name.lower() == wanted or
                      c.name.lower().rstrip().endswith((f" {wanted}", f"_{wanted}", f"-{wanted}"))), None)
        (found if match is not None else missing).append(match if match is not None else name)
    if missing:
        raise ValueError(
            f"the model expects the channels {', '.join(names)}; no image layer on {layer.name}'s grid is "
            f"named for {', '.join(missing)} (open each channel as a layer named like '<scan> {missing[0]}')"
        )
    return found


def model_volume(viewer: Any, layer: Any, model_path: Any) -> Volume:
    """``layer`` as a Volume; for a multi-channel model, the layers that are its channels stacked in the
    model's order (:func:`channel_layers`). A one-channel (or unreadable) model gets ``layer`` alone."""
    from napari_sscce.models.checkpoint import read_checkpoint_metadata

    volume = volume_from_layer(layer)
    try:
        names = model_channels(read_checkpoint_metadata(model_path)) if model_path else []
    except (ValueError, OSError):  # an unreadable model fails visibly when the run loads it
        return volume
    if not names:
        return volume
    return stack_channels(volume, channel_layers(viewer, layer, names), names)


def stack_channels(volume: Volume, layers: list[Any], names: list[str]) -> Volume:
    """The channel ``layers`` (in the order of ``names``) as one (C, z, y, x) Volume on ``volume``'s grid."""
    stacked = np.stack([np.asarray(volume_from_layer(c).array, dtype=np.float32) for c in layers])
    return Volume(stacked, spacing=volume.spacing, affine=volume.affine, source=volume.source,
                  metadata=dict(volume.metadata), channel_names=tuple(names))


def device_in_use(name: str) -> str:
    """What ``name`` resolves to on this machine, or why it cannot be used."""
    from napari_sscce.inference.device import DeviceError, resolve_device

    try:
        return str(resolve_device(name))
    except DeviceError as exc:
        return f"unavailable ({exc})"


def device_tooltip() -> str:
    """The device combo's tooltip: the cheap part of ``sscce doctor`` (versions, devices, CPU bf16 flags,
    what precision 'auto' picks, cached self-check verdicts; no measurement, so the GUI does not wait)."""
    from napari_sscce.precision import doctor_report

    try:
        report = doctor_report(measure=False)
    except Exception as exc:  # noqa: BLE001 - a tooltip must never break the widget
        report = f"(system report unavailable: {exc})"
    return "Where to compute. Run `sscce doctor` for measured precision checks and speed.\n\n" + report


class ImageLayerCombo(QComboBox):
    """A combo box of the viewer's image layers that follows layers being added, removed or renamed."""

    def __init__(self, viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Re-list the image layers, keeping the current choice when it still exists."""
        current = self.currentText()
        names = [layer.name for layer in image_layers(self.viewer)]
        for layer in image_layers(self.viewer):  # follow renames
            try:
                layer.events.name.connect(self.refresh, unique=True)
            except TypeError:
                layer.events.name.connect(self.refresh)
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:  # e.g. the first image opened: listeners learn of the new choice
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        """The chosen layer."""
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None


class ChannelPicker(QWidget):
    """One combo per channel of a multi-channel model: the image layer that is that channel, preselected by
    name (:func:`channel_layers`) and changeable by the person. Hidden for a one-channel model."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.combos: dict[str, QComboBox] = {}
        self.setVisible(False)

    def refresh(self, viewer: Any, layer: Any | None, names: list[str]) -> None:
        """List the layers on ``layer``'s grid for each channel of ``names``; keep a person's choices."""
        kept = {n: c.currentText() for n, c in self.combos.items()}
        while self.form.rowCount():
            self.form.removeRow(0)
        self.combos = {}
        self.setVisible(bool(names) and layer is not None)
        if not names or layer is None:
            return
        grid = [c.name for c in image_layers(viewer)
                if np.shape(c.data) == np.shape(layer.data) and tuple(c.scale) == tuple(layer.scale)]
        try:
            guess = [c.name for c in channel_layers(viewer, layer, names)]
        except ValueError:
            guess = [""] * len(names)
        for name, proposed in zip(names, guess, strict=True):
            combo = QComboBox(self)
            combo.addItems(["", *grid])
            choice = kept.get(name) if kept.get(name) in grid else proposed
            combo.setCurrentText(choice or "")
            combo.setToolTip(f"the image layer that is the model's channel {name!r}")
            self.form.addRow(f"channel {name}", combo)
            self.combos[name] = combo

    def chosen(self, viewer: Any) -> list[Any] | None:
        """The chosen layers in the model's order, or None when a channel has no layer chosen."""
        names = [c.currentText() for c in self.combos.values()]
        if not names or not all(names) or any(n not in viewer.layers for n in names):
            return None
        return [viewer.layers[n] for n in names]


class SegmentWidget(QWidget):
    """Segment a 3D image with a two-network model and show its uncertainty.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.runner = WorkRunner(self)
        self.last_prediction: Prediction | None = None
        #: how the last image segmented differs from the model's training data (shown on the status line)
        self.domain_warnings: list[str] = []
        self._run_layer: Any = None
        self._note = ""  # the assumed-spacing note of the image being segmented (shown once)
        #: a model the person picked is kept for every image; otherwise each image gets the model that fits it
        self._model_picked = False
        self._build_model_controls()
        self._build_options()
        self._build_run_controls()
        self._build_layout()
        self._connect()
        self.session.inference_config = self.config  # a re-segmentation after a fine-tune uses these settings
        self._fill_models()
        self._propose_for_image()
        self._update_device_label(self.device_combo.currentText())

    # -------------------------------------------------------------------------------------- building
    def _build_model_controls(self) -> None:
        self.image_combo = ImageLayerCombo(self.viewer, self)
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip(
            "A packaged model (trained on real scans; see `sscce models`), or a napari-sscce model file"
        )
        self.browse_button = QPushButton("…", self)
        self.browse_button.setToolTip(BROWSE)
        self.browse_button.setMaximumWidth(32)
        self.model_info = QLabel("no model chosen", self)
        self.model_info.setWordWrap(True)
        self.channel_picker = ChannelPicker(self)

    def _build_options(self) -> None:
        """The inference options: a magicgui form over :class:`InferenceConfig` (its defaults and docs)."""
        self.options = config_widgets(InferenceConfig, OPTION_SPECS)
        self.device_combo = self.options["device"].native
        self.device_combo.setToolTip(device_tooltip())
        self.device_label = QLabel(self)
        self.overlap_spin = self.options["overlap"].native
        self.tta_check = self.options["tta"].native
        self.largest_check = self.options["largest_component"].native
        self.per_network_check = self.options["return_per_network"].native

    def _build_run_controls(self) -> None:
        self.run_button = QPushButton("Segment", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setRange(0, 100)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)

    def _build_layout(self) -> None:
        self.sections = {"model": Section("Image and model", True, self),
                         "options": Section("Options", True, self)}
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        model = self.sections["model"]
        model.add_row("image", self.image_combo)
        model.add_row("model", model_row)
        model.add_full(self.channel_picker)
        model.add_full(self.model_info)
        options = self.sections["options"]
        options.add_row("device", self.device_combo)
        options.add_full(self.device_label)
        options.add_row("overlap", self.overlap_spin)
        for name in ("tta", "largest_component", "return_per_network"):
            options.add_full(self.options[name].native)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout()
        layout.addWidget(model)
        layout.addWidget(options)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)
        align_labels(list(self.sections.values()))
        set_scrolling_layout(self, layout)

    def _connect(self) -> None:
        self.browse_button.clicked.connect(self._browse)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.device_combo.currentTextChanged.connect(self._update_device_label)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.failed.connect(self._on_failed)
        self.session.model_changed.connect(self._on_session_model)
        self.image_combo.currentTextChanged.connect(lambda _: self._propose_for_image())
        self.image_combo.currentTextChanged.connect(lambda _: self._refresh_channels())

    # ------------------------------------------------------------------------------------------ controls
    def config(self) -> InferenceConfig:
        """The inference settings the controls describe (the magicgui form's values)."""
        return InferenceConfig(**config_values(self.options))

    @property
    def model_path(self) -> Path | None:
        """The chosen model file."""
        return self.session.model_path

    def set_model(self, path: str | Path, picked: bool = True) -> None:
        """Use the model file ``path`` (shown with its metadata; shared with the other widgets).

        Parameters
        ----------
        path : path-like
            The model file.
        picked : bool
            Whether the person chose it (then it stays for every image); False for the widget's own proposal.

        Raises
        ------
        napari_sscce.models.checkpoint.CheckpointError
            When the file is not a napari-sscce model.
        """
        from napari_sscce.models.checkpoint import read_checkpoint_metadata
        from napari_sscce.models.pretrained import card_summary

        path = Path(path)
        metadata = read_checkpoint_metadata(path)
        self.model_info.setText("\n".join(t for t in (model_summary(metadata), card_summary(metadata)) if t))
        self.session.set_model(path)
        self._model_picked = picked
        remember_model(path)
        self._fill_models()
        self._refresh_channels()

    def propose_model(self, layer: Any | None = None) -> Path | None:
        """The known model whose training data fits ``layer`` (default: the chosen image) best.

        Rules in :mod:`napari_sscce.models.matching` (field of view, spacing, intensities, modality hint).
        """
        from napari_sscce.models.checkpoint import read_checkpoint_metadata
        from napari_sscce.models.matching import propose_model

        layer = layer or self.image_combo.layer()
        if layer is None:
            return None
        try:
            volume = volume_from_layer(layer)
        except ValueError:
            return None
        candidates = []
        for _, path in known_models():
            try:
                candidates.append((path, read_checkpoint_metadata(path)))
            except (ValueError, OSError):
                continue
        best = propose_model(volume, candidates)
        return None if best is None else Path(best[0])

    def _propose_for_image(self) -> None:
        """Switch to the model that fits the chosen image, unless the person picked one."""
        note = assumed_spacing_note(self.image_combo.layer())
        if note:
            self.status.setText(note)
        if self._model_picked or self.runner.running:
            return
        path = self.propose_model()
        if path is not None and (self.model_path is None or path.resolve() != self.model_path.resolve()):
            try:
                self.set_model(path, picked=False)
            except (ValueError, OSError) as exc:
                self.model_info.setText(str(exc))

    def _fill_models(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        current = self.session.model_path
        entries = known_models()
        if current is not None and all(p.resolve() != current.resolve() for _, p in entries):
            entries.insert(0, (model_label(current), current))
        for label, path in entries:
            self.model_combo.addItem(label, str(path))
        self.model_combo.addItem(BROWSE, "")
        if current is not None:
            index = self.model_combo.findData(str(current))
            self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)
        if current is None and entries:  # the first known model until an image says which fits
            try:
                self.set_model(entries[0][1], picked=False)
            except ValueError as exc:
                self.model_info.setText(str(exc))

    def _on_model_chosen(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        if not data:
            self._browse()
            return
        try:
            self.set_model(data)
        except (ValueError, OSError) as exc:
            self.model_info.setText(str(exc))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a napari-sscce model", "", "Models (*.safetensors)"
        )
        if path:
            try:
                self.set_model(path)
            except (ValueError, OSError) as exc:
                self.model_info.setText(str(exc))

    def _on_session_model(self, path: str) -> None:
        if path and Path(path) != self._combo_path():
            self._model_picked = True  # a model the person trained or reverted to stays in use
            try:
                from napari_sscce.models.checkpoint import read_checkpoint_metadata

                self.model_info.setText(model_summary(read_checkpoint_metadata(path)))
            except (ValueError, OSError) as exc:
                self.model_info.setText(str(exc))
            self._fill_models()

    def _combo_path(self) -> Path | None:
        data = self.model_combo.currentData()
        return Path(data) if data else None

    def _update_device_label(self, name: str) -> None:
        self.device_label.setText(f"uses: {device_in_use(name)}")

    # ---------------------------------------------------------------------------------------------- run
    def run(self, image_layer: Any | None = None) -> None:
        """Segment ``image_layer`` (default: the chosen one) in the background.

        The result layers appear when the work ends (``runner.finished``); errors go to the status line.
        """
        layer = image_layer or self.image_combo.layer()
        if layer is None:
            self.status.setText("Open a 3D image first (File > Open, or File > Open Sample > napari-sscce).")
            return
        if self.model_path is None:
            self.status.setText("Choose a model file first.")
            return
        try:
            volume = self._volume_for_model(layer)
            config = self.config()
            apply_nan_policy(volume, config.nan_policy)  # NaN / Inf voxels: a clear message, no run
        except ValueError as exc:
            self.status.setText(f"cannot segment {layer.name}: {exc}")
            return
        self._run_layer = layer
        self._set_running(True)
        self.domain_warnings = self._check_domain(volume)
        self._note = assumed_spacing_note(layer)  # said once per layer (here, or when it was chosen)
        self.status.setText(f"segmenting {layer.name} …" + self._warning_text())
        self.runner.start(
            predict_with_session, self.session, predict_volume, str(self.model_path), volume, config
        )

    def _volume_for_model(self, layer: Any) -> Any:
        """``layer`` as the model's input: for a multi-channel model the layers the channel picker names
        (preselected by name), else :func:`model_volume`."""
        self._refresh_channels(layer)
        chosen = self.channel_picker.chosen(self.viewer) if self.channel_picker.combos else None
        if chosen is None:
            return model_volume(self.viewer, layer, self.model_path)
        return stack_channels(volume_from_layer(layer), chosen, list(self.channel_picker.combos))

    def _refresh_channels(self, layer: Any | None = None) -> None:
        """Show one layer choice per channel when the model has several."""
        from napari_sscce.models.checkpoint import read_checkpoint_metadata

        try:
            names = model_channels(read_checkpoint_metadata(self.model_path)) if self.model_path else []
        except (ValueError, OSError):
            names = []
        self.channel_picker.refresh(self.viewer, layer or self.image_combo.layer(), names)

    def _check_domain(self, volume: Any) -> list[str]:
        """How ``volume`` differs from the model's training data (rules: ``models.pretrained``)."""
        from napari_sscce.models.checkpoint import read_checkpoint_metadata
        from napari_sscce.models.pretrained import domain_warnings

        try:
            return domain_warnings(volume, read_checkpoint_metadata(self.model_path))
        except (ValueError, OSError):  # an unreadable model fails visibly when the run loads it
            return []

    def _warning_text(self) -> str:
        lines = [f"warning: {w}" for w in self.domain_warnings] + ([self._note] if self._note else [])
        return "".join(f"\n{line}" for line in lines)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress_bar.setValue(0)

    def _on_progress(self, event: ProgressEvent) -> None:
        self.progress_bar.setValue(int(round(100 * event.fraction)))
        self.status.setText(describe_event(event))

    def _on_finished(self, prediction: Prediction) -> None:
        self._set_running(False)
        self.progress_bar.setValue(100)
        self.last_prediction = prediction
        layer = self._run_layer
        if layer is None or layer not in self.viewer.layers:
            self.status.setText("the image layer was closed before the segmentation ended")
            return
        show_prediction(self.viewer, layer, prediction, per_network=self.per_network_check.isChecked())
        self.device_label.setText(f"used: {prediction.device}")
        self.status.setText(
            f"{layer.name}: done in {prediction.seconds:.1f} s on {prediction.device}" + self._warning_text()
        )

    def _on_cancelled(self) -> None:
        self._set_running(False)
        self.progress_bar.setValue(0)
        self.status.setText("cancelled; the previous layers were kept")

    def _on_failed(self, exc: Exception) -> None:
        self._set_running(False)
        self.status.setText(f"segmentation failed: {exc}")
