"""Issue 25: a workspace's classes are what a person confirmed, not the label values painted so far."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.models.checkpoint import read_checkpoint_metadata
from napari_sscce.models.matching import ClassMismatchError, check_classes_match, workspace_labels_classes
from napari_sscce.workspace import Workspace, WorkspaceError
from sscce_factory import tiny_model_file

SHAPE = (8, 12, 12)


def _case(values: dict[int, slice]) -> tuple[Volume, Volume]:
    image = Volume(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), (1.0, 1.0, 1.0))
    label = np.zeros(SHAPE, np.uint8)
    for value, where in values.items():
        label[where] = value
    return image, image.with_array(label, is_label=True)


def test_only_class_1_painted_of_three_confirmed_is_still_three_classes(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.confirm_classes(["background", "anterior", "posterior"])
    ws.add_case(*_case({1: slice(2, 4)}), name="a")  # only class 1 painted so far
    assert workspace_labels_classes(ws) == ["background", "anterior", "posterior"]
    two = read_checkpoint_metadata(tiny_model_file(tmp_path / "two.safetensors", num_classes=2))
    three = read_checkpoint_metadata(tiny_model_file(
        tmp_path / "three.safetensors", num_classes=3, class_names=["background", "anterior", "posterior"]))
    with pytest.raises(ClassMismatchError, match=r"predicts 2 classes .* has 3 \(background, anterior"):
        check_classes_match(workspace_labels_classes(ws), two, ws.folder)
    check_classes_match(workspace_labels_classes(ws), three, ws.folder)  # the model made for them: accepted
    # the confirmation survives reopening
    assert Workspace(ws.folder).class_names == ["background", "anterior", "posterior"]


def test_a_stray_value_does_not_add_a_class_once_confirmed(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.confirm_classes(["background", "atrium"])
    with pytest.raises(WorkspaceError, match="value 2, outside the 2 classes"):
        ws.add_case(*_case({1: slice(2, 4), 2: slice(5, 6)}), name="stray")
    assert ws.cases == []


def test_without_a_confirmation_the_labels_are_counted(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_case({1: slice(2, 4)}), name="a")
    assert ws.class_names is None and workspace_labels_classes(ws) == 2


def test_confirming_fewer_classes_than_the_stored_labels_use_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_case({2: slice(2, 4)}), name="a")
    with pytest.raises(WorkspaceError, match="case 'a' has label 2, but only 2 classes were named"):
        ws.confirm_classes(["background", "atrium"])
    with pytest.raises(WorkspaceError, match="at least two different"):
        ws.confirm_classes(["background", "Background", "x"])
    assert ws.class_names is None


def test_generic_model_names_do_not_refuse_named_classes(tmp_path):
    generic = read_checkpoint_metadata(tiny_model_file(tmp_path / "g.safetensors", num_classes=2))
    assert generic["class_names"] == ["background", "class 1"]
    check_classes_match(["background", "atrium"], generic, "ws")  # generic names name nothing
    named = {**generic, "class_names": ["background", "left atrium"]}
    with pytest.raises(ClassMismatchError, match=r"\(background, left atrium\) are not those of ws"):
        check_classes_match(["background", "atrium"], named, "ws")
