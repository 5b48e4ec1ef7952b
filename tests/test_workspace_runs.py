"""Run folders (issue 24): cleaned when a fine-tune ends, keeping what a version needs and what a person
made; a size bound; killed runs' folders cleaned at the next open; only folders with our marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import napari_sscce
from napari_sscce.workspace import RUN_MARKER, Workspace

SRC = str(Path(napari_sscce.__file__).resolve().parents[1])


def _fake_run(run: Path, mb: float = 1.0) -> None:
    """What a fine-tune leaves: checkpoints, training state and logs in model/, a data view in view/."""
    model = run / "model"
    model.mkdir()
    for name in ("best.safetensors", "last.safetensors", "train_state.pt"):
        (model / name).write_bytes(b"w" * int(mb * 1024 * 1024))
    (model / "metrics.jsonl").write_text('{"it": 1}\n', encoding="utf-8")
    (model / "config.json").write_text("{}", encoding="utf-8")
    (run / "view" / "images").mkdir(parents=True)
    (run / "view" / "images" / "c.nii.gz").write_bytes(b"v" * 1000)


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def test_finish_run_frees_the_large_files_keeps_logs_and_a_persons_files(ws, tmp_path):
    run = ws.new_run_folder()
    assert run.parent == ws.folder / "runs" and (run / RUN_MARKER).is_file()
    _fake_run(run)
    case = tmp_path / "case.nii.gz"  # the view links to a workspace case file: the target must survive
    case.write_bytes(b"a person's scan")
    (run / "view" / "images" / "linked.nii.gz").symlink_to(case)
    (run / "my_notes.txt").write_text("mine", encoding="utf-8")
    version = ws.add_model_version(run / "model" / "best.safetensors")
    freed = ws.finish_run(run, version)
    assert freed >= 3 * 1024 * 1024
    assert not (run / "model" / "best.safetensors").exists() and not (run / "view").exists()
    assert (run / "model" / "metrics.jsonl").is_file() and (run / "my_notes.txt").read_text() == "mine"
    assert case.read_bytes() == b"a person's scan"
    assert ws.version_path(version).stat().st_size == 1024 * 1024  # the version's own copy
    marker = json.loads((run / RUN_MARKER).read_text(encoding="utf-8"))
    assert marker["state"] == "finished" and marker["version"] == version


def test_a_file_a_version_points_to_is_kept(ws):
    run = ws.new_run_folder()
    _fake_run(run)
    with ws._locked() as manifest:  # a version recorded in place (an older layout)
        manifest["models"].append({"version": "v0001", "path": str((run / "model" / "best.safetensors")
                                                                   .relative_to(ws.folder))})
        ws._save(manifest)
    ws.finish_run(run, "v0001")
    assert (run / "model" / "best.safetensors").is_file()
    assert not (run / "model" / "last.safetensors").exists()


def test_the_data_view_a_version_was_trained_on_is_kept_for_replay(ws, tmp_path):
    run = ws.new_run_folder()
    _fake_run(run)
    (run / "view" / "images" / "linked.nii.gz").symlink_to(run / "model" / "config.json")
    version = ws.add_model_version(run / "model" / "best.safetensors", {"run": str(run)})
    ws.finish_run(run, version)
    assert (run / "view" / "images" / "c.nii.gz").is_file()
    assert (run / "view" / "images" / "linked.nii.gz").is_symlink()
    assert not (run / "model" / "best.safetensors").exists()


def test_folders_without_our_marker_are_never_touched(ws, tmp_path):
    mine = ws.folder / "runs" / "by_hand"
    mine.mkdir(parents=True)
    _fake_run(mine)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _fake_run(outside)
    assert ws.finish_run(mine) == 0 and ws.finish_run(outside) == 0
    assert ws.prune_runs(keep=0, max_bytes=0) == 0
    assert (mine / "model" / "best.safetensors").is_file()
    assert (outside / "model" / "best.safetensors").is_file()


def test_a_symlinked_runs_folder_is_not_followed(ws, tmp_path):
    other = Workspace(tmp_path / "other")
    run = other.new_run_folder()
    _fake_run(run)
    (ws.folder / "runs").symlink_to(other.folder / "runs", target_is_directory=True)
    assert ws.prune_runs(keep=0, max_bytes=0, stale_after=0) == 0
    assert ws.finish_run(ws.folder / "runs" / run.name) == 0
    assert (run / "model" / "best.safetensors").is_file()
    mine = ws.new_run_folder()  # runs can still be made there (e.g. runs/ on another disk), never cleaned
    _fake_run(mine)
    assert ws.finish_run(mine) == 0 and (mine / "model" / "best.safetensors").is_file()


def test_the_size_bound_keeps_the_newest_runs(ws):
    runs = []
    for _ in range(4):
        run = ws.new_run_folder()
        _fake_run(run, mb=0.01)
        ws.finish_run(run)
        runs.append(run)
    (runs[0] / "my_notes.txt").write_text("mine", encoding="utf-8")
    ws.prune_runs(keep=2)
    assert [r.exists() for r in runs] == [True, False, True, True]  # the first holds a person's file
    assert sorted(p.name for p in runs[0].rglob("*")) == ["my_notes.txt"]
    assert (runs[2] / "model" / "metrics.jsonl").exists()
    ws.prune_runs(keep=5, max_bytes=1)
    assert not runs[2].exists() and not runs[3].exists()


CHILD = """
import os, sys
from napari_sscce.workspace import Workspace
run = Workspace(sys.argv[1]).new_run_folder()
(run / "model").mkdir()
(run / "model" / "best.safetensors").write_bytes(b"w" * 1000)
print(run, flush=True)
os._exit(9)  # killed mid-run
"""


def test_a_killed_runs_folder_is_cleaned_at_the_next_open_but_a_live_one_is_not(ws):
    live = ws.new_run_folder()  # this process is alive: its run is not touched
    _fake_run(live, mb=0.01)
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", CHILD, str(ws.folder)], env=env, capture_output=True,
                         text=True, timeout=120)
    killed = Path(out.stdout.strip())
    assert (killed / "model" / "best.safetensors").is_file(), out.stderr
    again = Workspace(ws.folder)
    assert again.runs_freed >= 1000
    assert not (killed / "model" / "best.safetensors").exists()
    assert json.loads((killed / RUN_MARKER).read_text(encoding="utf-8"))["state"] == "killed"
    assert (live / "model" / "best.safetensors").is_file()
