"""Two CPU processes (Gloo) train a few steps; both ranks must end with identical weights."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.training.config import TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from napari_sscce.training.loop import train

    result = train(TrainConfig.from_dict(config))
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    if rank == 0:
        assert result.last_path is not None and result.last_path.exists()
    else:
        assert result.last_path is None


@pytest.mark.slow
def test_two_cpu_ranks_end_with_identical_weights(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", 4, shape=(16, 16, 16), n_labeled=2, n_val=0, seed=1)
    cfg = TrainConfig(
        data=str(data), patch_size=(16, 16, 16), labeled_bs=1, unlabeled_bs=1, iterations=2,
        out=str(tmp_path / "run"), val_every=0, precision="fp32", base_filters=4, device="cpu",
    )
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "run" / "last.safetensors").exists()
    assert (tmp_path / "run" / "train_state.pt").exists()
