"""A malicious pickle (one that creates a file when unpickled) is refused by every loading entry point.

Each entry point gets the file; the marker file it would create must not appear and a clear error
(naming the file or the problem) must be raised.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from napari_sscce.io.sample_data import make_synthetic_dataset


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader runs pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(folder, marker):
    """The same payload as a raw pickle and as a ``torch.save`` zip archive, under several names."""
    payload = {"state_dict": {"w": _Evil(marker)}}
    raw = pickle.dumps(payload)
    files = []
    for name in ("evil.pt", "evil.pth", "evil.safetensors"):
        path = folder / name
        path.write_bytes(raw)
        files.append(path)
    zipped = folder / "evil_zip.pt"
    torch.save(payload, zipped)
    files.append(zipped)
    assert not marker.exists()
    return files


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    return marker, _evil_files(tmp_path, marker)


def test_the_payload_works_with_plain_pickle(tmp_path):
    """Sanity: the payload really creates the file when unpickled without protection."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def test_checkpoint_readers_refuse_pickles(evil):
    from napari_sscce.models.checkpoint import (
        CheckpointError,
        import_reference_vnet,
        load_checkpoint,
        read_checkpoint_metadata,
    )

    marker, files = evil
    for path in files:
        for loader in (load_checkpoint, read_checkpoint_metadata, import_reference_vnet):
            with pytest.raises(CheckpointError, match=path.name):
                loader(path)
            assert not marker.exists(), f"{loader.__name__}({path.name}) ran pickled code"


def test_predict_volume_refuses_a_pickle_model(evil):
    import numpy as np

    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.models.checkpoint import CheckpointError

    marker, files = evil
    for path in files:
        with pytest.raises(CheckpointError, match=path.name):
            predict_volume(path, np.zeros((8, 8, 8), np.float32))
        assert not marker.exists()


def test_cli_predict_refuses_a_pickle_model(evil, tmp_path, capsys):
    import numpy as np

    from napari_sscce.cli import main
    from napari_sscce.io.volume import Volume
    from napari_sscce.io.writers import write_volume

    marker, files = evil
    image = tmp_path / "scan.nii.gz"
    write_volume(Volume(np.zeros((8, 8, 8), np.float32)), image)
    for path in files:
        rc = main(["predict", str(image), "--model", str(path), "--out", str(tmp_path / "out"),
                   "--device", "cpu", "--precision", "fp32"])
        assert rc != 0
        assert path.name in capsys.readouterr().err
        assert not marker.exists()


def test_training_refuses_a_pickle_resume_state_and_init_checkpoint(evil, tmp_path):
    from napari_sscce.training.config import TrainConfig
    from napari_sscce.training.loop import STATE_FILE, train

    marker, files = evil
    data = make_synthetic_dataset(tmp_path / "data", 2, shape=(8, 16, 16), n_labeled=1, n_val=0, seed=0)
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(data=str(data), patch_size=(8, 16, 16), labeled_bs=1, unlabeled_bs=1, iterations=1,
                         val_every=0, precision="fp32", base_filters=4, out=str(out), resume=True)
    for path in files:
        (out / STATE_FILE).write_bytes(path.read_bytes())
        with pytest.raises(ValueError, match=STATE_FILE):
            train(config)
        assert not marker.exists()
    with pytest.raises(ValueError, match="evil.pt"):
        train(config.replace(resume=False, out=str(tmp_path / "run2")), init_checkpoint=str(files[0]))
    assert not marker.exists()


def test_workspace_manifest_and_volume_readers_refuse_pickles(evil, tmp_path):
    from napari_sscce.io.errors import VolumeError
    from napari_sscce.io.napari_io import get_reader
    from napari_sscce.io.readers import read_volume
    from napari_sscce.workspace import Workspace, WorkspaceError

    marker, files = evil
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(files[0].read_bytes())
    with pytest.raises(WorkspaceError, match="manifest.json"):
        Workspace(folder)
    for path in files:
        with pytest.raises(VolumeError):
            read_volume(path)
        assert get_reader(str(path)) is None
    assert not marker.exists()
