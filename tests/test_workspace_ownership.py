"""The workspace never deletes what it does not own (issue 24): no clean-up without a manifest that names
cases, nothing through a symlinked folder, orphans quarantined (recoverable) instead of deleted, only our own
temporaries older than the last commit deleted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from napari_sscce.atomic import TEMP_MARKER
from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace

SHAPE = (4, 5, 6)


def _volumes(value: int, name: str = "c"):
    image = Volume(np.full(SHAPE, float(value), np.float32), spacing=(2.0, 1.0, 1.0), metadata={"name": name})
    return image, image.with_array(np.full(SHAPE, value % 2, np.uint8), is_label=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (relative path -> bytes), symlinks not followed."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(folder))] = path.read_bytes()
    return out


def _workspace_with_cases(folder: Path, n: int = 2) -> Workspace:
    ws = Workspace(folder)
    for i in range(n):
        ws.add_case(*_volumes(i + 1), name=f"p{i}")
    model = folder.parent / f"{folder.name}_model.safetensors"
    model.write_bytes(b"w" * 5000)
    ws.add_model_version(model)
    return ws


def test_a_missing_manifest_deletes_nothing_and_says_what_was_found(tmp_path):
    folder = tmp_path / "ws"
    _workspace_with_cases(folder)
    (folder / "manifest.json").unlink()  # a partial copy, a sync tool
    before = _snapshot(folder)
    ws = Workspace(folder)
    assert _snapshot(folder) == before  # every image, label, mask and model kept, byte for byte
    assert ws.cleaned["orphans"] == 0 and ws.quarantined is None
    assert any("no manifest.json" in note and "images" in note for note in ws.notes), ws.notes
    assert any("model version folders" in note for note in ws.notes), ws.notes


def test_a_manifest_emptied_of_cases_deletes_nothing(tmp_path):
    folder = tmp_path / "ws"
    _workspace_with_cases(folder)
    (folder / "manifest.json").write_text(json.dumps({"cases": {}}), encoding="utf-8")
    before = _snapshot(folder)
    ws = Workspace(folder)
    after = _snapshot(folder)
    assert after == {**before, "manifest.json": after["manifest.json"]}
    assert not (folder / "quarantine").exists()
    assert any("names none" in note for note in ws.notes), ws.notes


def test_symlinked_folders_into_a_second_workspace_leave_its_files_intact(tmp_path):
    other = tmp_path / "other"
    _workspace_with_cases(other, 3)
    temp = other / "images" / f".x__0123abcd.nii.gz{TEMP_MARKER}abc.nii.gz"  # the other one's writer
    temp.write_bytes(b"half")
    os.utime(temp, (1, 1))  # older than any commit
    before = _snapshot(other)
    mine = tmp_path / "mine"
    _workspace_with_cases(mine, 1)
    for sub in ("images", "labels", "masks", "models"):
        shutil.rmtree(mine / sub)
        (mine / sub).symlink_to(other / sub, target_is_directory=True)
    manifest = json.loads((mine / "manifest.json").read_text(encoding="utf-8"))
    manifest["cases"], manifest["models"], manifest["current"] = {}, [], None
    (mine / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    ws = Workspace(mine)
    assert _snapshot(other) == before  # nothing of the second workspace removed or moved
    assert ws.cleaned == {"temporaries": 0, "orphans": 0, "bytes": 0}
    assert sum("is a symlink" in note for note in ws.notes) == 4, ws.notes
    assert Workspace(other).cleaned["orphans"] == 0  # and the second workspace itself is consistent


def test_a_symlinked_case_file_is_not_followed(tmp_path):
    other = tmp_path / "other"
    _workspace_with_cases(other, 1)
    target = other / Workspace(other).case("p0").image
    folder = tmp_path / "ws"
    _workspace_with_cases(folder, 1)
    link = folder / "images" / "stolen__89abcdef.nii.gz"
    link.symlink_to(target)
    before = target.read_bytes()
    Workspace(folder)
    assert target.read_bytes() == before and link.is_symlink()


def test_orphans_are_quarantined_not_deleted(tmp_path):
    folder = tmp_path / "ws"
    ws = _workspace_with_cases(folder, 2)
    kept = _snapshot(folder)
    orphan = folder / "labels" / "gone__0123abcd.nii.gz"
    orphan.write_bytes(b"a person's label")
    version = folder / "models" / "v0042"
    version.mkdir()
    (version / "model.safetensors").write_bytes(b"weights")
    again = Workspace(folder)
    assert again.cleaned["orphans"] == 2
    assert not orphan.exists() and not version.exists()
    q = again.quarantined
    assert q is not None and q.parent == (folder / "quarantine").resolve()
    assert (q / "labels" / orphan.name).read_bytes() == b"a person's label"
    assert (q / "models" / "v0042" / "model.safetensors").read_bytes() == b"weights"
    assert {k: v for k, v in _snapshot(folder).items() if not k.startswith("quarantine")} == kept
    assert Workspace(folder).cleaned["orphans"] == 0  # the quarantine is never touched again
    assert (q / "labels" / orphan.name).exists()
    assert [c.name for c in ws.cases] == ["p0", "p1"]


def test_only_our_temporaries_older_than_the_last_commit_are_deleted(tmp_path):
    folder = tmp_path / "ws"
    _workspace_with_cases(folder, 1)
    commit = (folder / "manifest.json").stat().st_mtime
    old_ours = folder / "images" / f".p9__0123abcd.nii.gz{TEMP_MARKER}old.nii.gz"
    new_ours = folder / "images" / f".p9__0123abcd.nii.gz{TEMP_MARKER}new.nii.gz"
    not_ours = folder / "images" / f".notes.txt{TEMP_MARKER}x.txt"
    for path in (old_ours, new_ours, not_ours):
        path.write_bytes(b"x")
    os.utime(old_ours, (commit - 60, commit - 60))
    os.utime(not_ours, (commit - 60, commit - 60))
    os.utime(new_ours, (commit + 60, commit + 60))  # a writer after the last commit: not provably dead
    ws = Workspace(folder)
    assert ws.cleaned["temporaries"] == 1
    assert not old_ours.exists() and new_ours.exists() and not_ours.exists()


def test_sscce_finetune_says_what_opening_found(tmp_path, capsys):
    from napari_sscce.cli import main

    folder = tmp_path / "ws"
    _workspace_with_cases(folder)
    (folder / "manifest.json").unlink()
    before = _snapshot(folder)
    assert main(["finetune", "--workspace", str(folder)]) != 0  # no labeled case in a workspace without one
    err = capsys.readouterr().err
    assert "note:" in err and "no manifest.json" in err
    assert "Traceback" not in err and _snapshot(folder) == before
