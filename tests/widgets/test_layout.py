"""Issue 25: the docks read at 1366x768 and 1920x1080: grid forms whose labels never cover their controls,
collapsible sections, nothing widened past the screen by a long name, the Segment options built with
magicgui from InferenceConfig (defaults and tooltips from the dataclass)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import QFormLayout

from napari_sscce.inference.config import InferenceConfig
from napari_sscce.training.plan import Plan
from napari_sscce.widgets._config_form import attribute_docs
from napari_sscce.widgets.finetune import FinetuneWidget
from napari_sscce.widgets.segment import SegmentWidget
from napari_sscce.widgets.uncertainty import UncertaintyWidget

WIDGETS = Path(__file__).resolve().parents[2] / "src" / "napari_sscce" / "widgets"
LONG = "a_scan_with_a_very_long_name_exported_by_some_scanner_software_" * 2
#: the widest a dock may need to be: a 1366-pixel screen keeps the canvas usable beside two side docks
MAX_DOCK_WIDTH = 420


@pytest.fixture
def docks(qtbot, make_napari_viewer, tiny_model_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 16, 16), np.float32), name=LONG)
    viewer.add_labels(np.zeros((8, 16, 16), np.uint8), name=LONG + " painted")
    segment = SegmentWidget(viewer)
    segment.set_model(tiny_model_path)
    return {"segment": segment, "uncertainty": UncertaintyWidget(viewer), "finetune": FinetuneWidget(viewer)}


@pytest.mark.parametrize("name", ["segment", "uncertainty", "finetune"])
def test_labels_never_cover_their_controls_and_long_names_do_not_widen_the_dock(qtbot, docks, name):
    widget = docks[name]
    assert widget.scroll_area.minimumWidth() <= MAX_DOCK_WIDTH
    for width in (300, 480):
        widget.resize(width, 1000)
        widget.show()
        qtbot.waitExposed(widget)
        rows = 0
        for section in widget.sections.values():
            form = section.form
            for row in range(form.rowCount()):
                label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
                field = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
                if label is None or field is None or label.widget() is None:
                    continue
                rows += 1
                assert not label.geometry().intersects(field.geometry()), (name, row, width)
        assert name == "uncertainty" or rows >= 3


def test_sections_fold_away(qtbot, docks):
    section = docks["finetune"].sections["training"]
    assert section.expanded
    section.toggle.click()
    assert not section.expanded and section.body.isHidden()
    section.toggle.click()
    assert section.expanded and not section.body.isHidden()
    assert not docks["finetune"].sections["versions"].expanded  # long, rarely needed: starts folded


def test_the_painted_layer_with_a_long_name_is_offered(docks):
    widget = docks["finetune"]
    assert widget.labels_combo.currentText() == LONG + " painted"


def test_segment_options_come_from_inference_config(docks):
    segment = docks["segment"]
    assert segment.config() == InferenceConfig()  # the controls start at the dataclass defaults
    assert segment.overlap_spin.toolTip().startswith("Fraction in [0, 1) by which neighbouring windows")
    assert "largest connected component" in segment.largest_check.toolTip()
    segment.overlap_spin.setValue(0.25)
    segment.tta_check.setChecked(True)
    assert (segment.config().overlap, segment.config().tta) == (0.25, True)


def test_attribute_docs_reads_numpydoc_attributes():
    docs = attribute_docs(Plan)
    assert docs["reasons"] == "Why each choice was made, in words."
    assert docs["labeled_bs"] == docs["unlabeled_bs"] == ""  # a shared entry without a description
    assert docs["step_seconds"].startswith("Measured seconds per training step")


def test_no_widget_function_is_over_100_lines():
    long = []
    for path in WIDGETS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == []
