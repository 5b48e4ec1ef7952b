"""Run folders (issue 12, item 6): refused reuse, one run at a time, kills while saving checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import napari_sscce
from napari_sscce.atomic import CRASH_ENV, CRASH_EXIT_CODE, TEMP_MARKER
from napari_sscce.cli import main
from napari_sscce.io.sample_data import make_synthetic_dataset
from napari_sscce.models.checkpoint import load_checkpoint
from napari_sscce.training.config import TrainConfig
from napari_sscce.training.loop import STATE_FILE, train
from napari_sscce.training.run_folder import RunFolderError, truncate_metrics
from napari_sscce.workspace import Workspace

SRC = str(Path(napari_sscce.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(folder, 3, shape=(16, 16, 16), n_labeled=2, n_val=0, seed=3)


def tiny_config(dataset, out, **kw) -> TrainConfig:
    base = dict(data=str(dataset), patch_size=(16, 16, 16), labeled_bs=2, unlabeled_bs=0, iterations=2,
                out=str(out), val_every=0, precision="fp32", base_filters=2, seed=7, has_dropout=False,
                method="supervised")
    base.update(kw)
    return TrainConfig(**base)


def _env(crash: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return env


def test_a_finished_run_is_not_replaced_without_overwrite(dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(dataset, out))
    best = (out / "best.safetensors").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    assert metrics.strip()
    with pytest.raises(RunFolderError, match="already holds a training run.*--resume.*--overwrite"):
        train(tiny_config(dataset, out, seed=8))
    assert (out / "best.safetensors").read_bytes() == best
    assert (out / "metrics.jsonl").read_text() == metrics
    cli = ["train", "--data", str(dataset), "--out", str(out), "--iterations", "1", "--method", "supervised",
           "--patch", "16", "16", "16", "--base-filters", "2", "--precision", "fp32", "--quiet",
           "--batch", "2", "0"]
    assert main(cli) == 2  # a clear error, not a traceback
    assert (out / "best.safetensors").read_bytes() == best
    assert main([*cli, "--overwrite", "--no-dropout"]) == 0
    assert load_checkpoint(out / "best.safetensors").metadata["train_summary"]["iterations"] == 1


def test_a_second_run_on_a_busy_folder_fails_fast(dataset, tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from napari_sscce.training.run_folder import claim_run_folder\n"
         "with claim_run_folder(sys.argv[1]):\n"
         "    print('ready', flush=True)\n"
         "    time.sleep(60)\n",
         str(out)],
        env=_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        start = time.monotonic()
        with pytest.raises(RunFolderError, match="another training run is using this folder"):
            train(tiny_config(dataset, out))
        assert time.monotonic() - start < 30  # no waiting for the other run
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train(tiny_config(dataset, out))  # the lock went with the killed process


def test_resume_tolerates_a_half_written_metrics_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "loss": 1}\n{"iteration": 2, "loss": 0.5}\n{"iteration": 3, "lo')
    truncate_metrics(path, 2)
    assert [json.loads(x)["iteration"] for x in path.read_text().splitlines()] == [1, 2]
    path.write_text('{"iteration": 1}\nbroken\n{"iteration": 2}\n')
    with pytest.raises(RunFolderError, match="line 2"):
        truncate_metrics(path, 2)


#: a 2-iteration run writes config.json (1), splits.json (2), last (3), best (4), train_state.pt (5): the
#: write and rename of a checkpoint and the write of the state (benchmarks/reliability.py kills at all 10)
CHECKPOINT_POINTS = ["atomic.written@3", "atomic.replaced@3", "atomic.written@5"]


@pytest.mark.parametrize("point", CHECKPOINT_POINTS)
def test_a_run_killed_while_saving_resumes_or_restarts_cleanly(dataset, tmp_path, point):
    out = tmp_path / "run"
    cfg = tiny_config(dataset, out)
    config_file = tmp_path / "config.json"
    cfg.save(config_file)
    child = ("import sys\nfrom napari_sscce.training.config import TrainConfig\n"
             "from napari_sscce.training.loop import train\ntrain(TrainConfig.load(sys.argv[1]))\n")
    result = subprocess.run([sys.executable, "-c", child, str(config_file)], env=_env(point),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == CRASH_EXIT_CODE, result.stderr[-2000:]
    if point.startswith("atomic.written"):
        assert [p for p in out.iterdir() if TEMP_MARKER in p.name]  # the kill left a temporary
    resume = (out / STATE_FILE).exists()
    done = train(cfg.replace(resume=resume, overwrite=not resume))
    assert done.iterations == 2 and not done.cancelled
    assert not [p for p in out.iterdir() if TEMP_MARKER in p.name]
    load_checkpoint(out / "last.safetensors")
    assert all(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())


def test_a_tiny_training_on_a_workspace_after_a_killed_add_case(tmp_path):
    from napari_sscce.io.sample_data import make_synthetic

    ws = Workspace(tmp_path / "ws")
    for i in range(2):
        image, label = make_synthetic(shape=(16, 16, 16), seed=i)
        ws.add_case(image, label, name=f"case {i}")
    image, label = make_synthetic(shape=(16, 16, 16), seed=5)
    child = (
        "import sys\nfrom napari_sscce.io.sample_data import make_synthetic\n"
        "from napari_sscce.workspace import Workspace\n"
        "image, label = make_synthetic(shape=(16, 16, 16), seed=5)\n"
        "Workspace(sys.argv[1]).add_case(image, label, name='case_1', update=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "ws")],
                            env=_env("atomic.replaced@2"), capture_output=True, text=True, timeout=120)
    assert result.returncode == CRASH_EXIT_CODE, result.stderr
    ws = Workspace(tmp_path / "ws")
    assert ws.cleaned["orphans"] == 2  # the new image and label, never committed
    data = ws.dataset_folder()
    done = train(tiny_config(data, tmp_path / "run", unlabeled_bs=0))
    assert done.iterations == 2
