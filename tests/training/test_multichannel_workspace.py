"""Multi-channel scans in the workspace and the correction loop: images keep their channels and names
(4D NIfTI, names in the manifest), labels and masks stay 3D, one workspace holds one set of channels, and a
first model trained from the workspace records the channel names."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.volume import Volume
from napari_sscce.loop import run_finetune
from napari_sscce.models.checkpoint import read_checkpoint_metadata
from napari_sscce.workspace import Workspace, WorkspaceError

SHAPE = (16, 16, 16)


def _case(seed: int, channels=("T1", "FLAIR")):
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    label[5:11, 4:12, 4:12] = 1
    image = rng.normal(0.0, 0.3, (len(channels), *SHAPE)).astype(np.float32)
    image[0][label > 0] += 1.0
    if len(channels) > 1:
        image[1][label > 0] -= 1.0
    vol = Volume(image if len(channels) > 1 else image[0], spacing=(2.0, 1.0, 1.0),
                 channel_names=tuple(channels) if len(channels) > 1 else ())
    return vol, Volume(label, spacing=(2.0, 1.0, 1.0), is_label=True)


def test_a_workspace_keeps_channels_and_refuses_others(tmp_path):
    ws = Workspace(tmp_path / "ws")
    image, label = _case(0)
    name = ws.add_case(image, label)
    back, lab, _ = ws.load_case(name)
    assert back.channel_names == ("T1", "FLAIR") and back.array.shape == (2, *SHAPE)
    np.testing.assert_allclose(back.array, image.array, atol=1e-6)
    assert lab.array.shape == SHAPE  # labels stay 3D
    assert Workspace(tmp_path / "ws").case(name).channels == ["T1", "FLAIR"]  # in the manifest
    ds = open_dataset(ws.dataset_folder())
    assert ds.load_case(name)[0].channel_names == ("T1", "FLAIR")
    for other in (_case(1, ("T1",)), _case(2, ("FLAIR", "T1"))):  # one channel, or another order
        with pytest.raises(WorkspaceError, match="same channels"):
            ws.add_case(*other, name="other")
    assert [c.name for c in ws.cases] == [name]  # nothing was added


def test_a_first_model_from_a_multichannel_workspace_records_the_names(tmp_path, one_torch_thread):
    ws = Workspace(tmp_path / "ws")
    for seed in range(2):
        image, label = _case(seed)
        mask = np.zeros(SHAPE, np.uint8)
        mask[4:12] = 1  # slices painted
        ws.add_case(image, label, Volume(mask, spacing=(2.0, 1.0, 1.0), is_label=True), name=f"c{seed}")
    result = run_finetune(ws, cold_start=True, method="supervised", iterations=3, base_filters=2,
                          patch_size=(16, 16, 16), device="cpu", precision="fp32", seed=0)
    assert result.version is not None, result.message
    meta = read_checkpoint_metadata(result.model_path)
    assert meta.get("channel_names") == ["T1", "FLAIR"] and int(meta.get("in_channels") or 0) == 2
