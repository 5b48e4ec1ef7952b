"""One conversion from a napari layer to a Volume (issue 12, item 7): the widgets use the strict one."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from napari_sscce.io.volume import Volume
from napari_sscce.widgets import _layers
from napari_sscce.workspace import Workspace


def _layer(spacing=(2.0, 1.0, 0.5)) -> Image:
    volume = Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), spacing=spacing,
                    metadata={"name": "scan"})
    return Image(volume.array, **volume.layer_kwargs())


def test_unchanged_layer_keeps_the_file_geometry():
    layer = _layer()
    volume = _layers.volume_from_layer(layer)
    assert volume.spacing == pytest.approx((2.0, 1.0, 0.5))
    assert volume.name == "scan"


def test_a_rescaled_layer_enters_the_labeled_set_with_its_new_spacing(tmp_path):
    layer = _layer()
    layer.scale = (3.0, 1.0, 0.5)  # the person fixed the slice thickness in napari
    volume = _layers.volume_from_layer(layer)
    assert volume.spacing == pytest.approx((3.0, 1.0, 0.5))
    labels = volume.with_array(np.ones(volume.shape, np.uint8), is_label=True)
    ws = Workspace(tmp_path)
    name = ws.add_case(volume, labels)
    assert ws.load_case(name)[0].spacing == pytest.approx((3.0, 1.0, 0.5))


def test_a_translated_layer_moves_the_origin():
    layer = _layer()
    layer.translate = (10.0, 0.0, 0.0)
    np.testing.assert_allclose(_layers.volume_from_layer(layer).translate, (10.0, 0.0, 0.0))


def test_not_3d_is_refused():
    with pytest.raises(ValueError, match="3D"):
        _layers.volume_from_layer(Image(np.zeros((4, 5)), name="flat"))
