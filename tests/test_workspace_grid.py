"""Labels added to the workspace must lie on the image's world grid (issue 24): same shape and spacing but a
mirrored or shifted affine is refused with a message; ``reorient=True`` puts a pure flip on the grid."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace, WorkspaceError

SHAPE = (4, 5, 6)


def _image() -> Volume:
    return Volume(np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), spacing=(2.0, 1.0, 1.0),
                  metadata={"name": "c"})


def _labels(image: Volume) -> np.ndarray:
    arr = np.zeros(SHAPE, np.uint8)
    arr[:, :, :2] = 1  # an asymmetric structure: mirrored along x it lands elsewhere
    return arr


def _mirrored_along_x(image: Volume, arr: np.ndarray) -> Volume:
    """The same anatomy stored flipped along x: array flipped, affine mirrored (same shape and spacing)."""
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, 2] * (SHAPE[2] - 1)
    affine[:3, 2] *= -1
    return Volume(np.ascontiguousarray(arr[:, :, ::-1]), spacing=image.spacing, affine=affine, is_label=True)


def test_a_mirrored_label_is_refused_with_a_message(tmp_path):
    image = _image()
    mirrored = _mirrored_along_x(image, _labels(image))
    assert mirrored.shape == image.shape and mirrored.spacing == image.spacing
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match=r"case 'c': .*mirrored along .*reorient=True"):
        ws.add_case(image, mirrored, name="c")
    assert ws.cases == [] and not any((tmp_path / "ws" / "labels").glob("*"))


def test_a_shifted_label_is_refused_even_with_reorient(tmp_path):
    image = _image()
    affine = image.affine.copy()
    affine[:3, 3] += (0.0, 3.0, 0.0)
    shifted = Volume(_labels(image), spacing=image.spacing, affine=affine, is_label=True)
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="origins differ"):
        ws.add_case(image, shifted, name="c")
    with pytest.raises(WorkspaceError, match="cannot be reoriented"):
        ws.add_case(image, shifted, name="c", reorient=True)
    assert ws.cases == []


def test_reorient_puts_a_mirrored_label_and_mask_on_the_image_grid(tmp_path):
    image = _image()
    arr = _labels(image)
    mask = np.zeros(SHAPE, np.uint8)
    mask[0] = 1
    ws = Workspace(tmp_path / "ws")
    ws.add_case(image, _mirrored_along_x(image, arr), _mirrored_along_x(image, mask), name="c", reorient=True)
    _, labels, stored_mask = ws.load_case("c")
    np.testing.assert_array_equal(labels.array, arr)  # voxel for voxel the anatomy of the image
    np.testing.assert_array_equal(stored_mask.array, mask)
    np.testing.assert_allclose(labels.affine, image.affine)


def test_a_label_on_the_image_grid_is_stored_unchanged(tmp_path):
    image = _image()
    ws = Workspace(tmp_path / "ws")
    ws.add_case(image, image.with_array(_labels(image), is_label=True), name="c", reorient=True)
    np.testing.assert_array_equal(ws.load_case("c")[1].array, _labels(image))
