"""Workspace under concurrency, crashes and hostile input (issue 12, items 1-5).

Concurrency and crash tests use real processes: writers run in ``subprocess`` children; crashes end a child
with ``os._exit`` at a named point (``SSCCE_CRASH_AT``, see ``napari_sscce.atomic.crash_point``) at every
write and rename of ``add_case`` and ``add_model_version``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_sscce
from napari_sscce.atomic import CRASH_ENV, CRASH_EXIT_CODE, TEMP_MARKER
from napari_sscce.io.datasets import open_dataset
from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace, WorkspaceError, safe_case_name

SRC = str(Path(napari_sscce.__file__).resolve().parents[1])
SHAPE = (4, 5, 6)

#: child: update case "c" to image value V / label value V (or add N cases named <prefix>_<i>)
CHILD = """
import sys
import numpy as np
from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace
from napari_sscce.models.checkpoint import save_checkpoint
folder, mode, value = sys.argv[1], sys.argv[2], int(sys.argv[3])
shape = (4, 5, 6)
def case(v, name):
    image = Volume(np.full(shape, float(v), np.float32), spacing=(2.0, 1.0, 1.0), metadata={"name": name})
    return image, image.with_array(np.full(shape, v, np.uint8), is_label=True)
if mode == "update":
    ws = Workspace(folder)
    image, labels = case(value, "c")
    ws.add_case(image, labels, None, name="c", update=True)
elif mode == "many":
    for i in range(value):
        ws = Workspace(folder)
        image, labels = case(i % 3, "x")
        ws.add_case(image, labels, name=f"{sys.argv[4]}_{i}")
elif mode == "model":
    ws = Workspace(folder)
    for i in range(value):
        ws.add_model_version(sys.argv[4], {"writer": sys.argv[5], "i": i})
"""


def _run_child(*args: str, crash: str | None = None, background: bool = False):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    cmd = [sys.executable, "-c", CHILD, *args]
    if background:
        return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _volumes(value: int, name: str = "c", spacing=(2.0, 1.0, 1.0)):
    image = Volume(np.full(SHAPE, float(value), np.float32), spacing=spacing, metadata={"name": name})
    return image, image.with_array(np.full(SHAPE, value, np.uint8), is_label=True)


def _case_files(folder: Path) -> set[str]:
    return {f"{sub}/{p.name}" for sub in ("images", "labels", "masks") if (folder / sub).is_dir()
            for p in (folder / sub).iterdir()}


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name]


# ------------------------------------------------------------------------------------------ item 1
def test_two_processes_adding_cases_keep_all_of_them(tmp_path):
    ws_dir = tmp_path / "ws"
    Workspace(ws_dir)
    writers = [_run_child(str(ws_dir), "many", "10", f"w{k}", background=True) for k in range(2)]
    for proc in writers:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    ws = Workspace(ws_dir)
    assert sorted(c.name for c in ws.cases) == sorted(f"w{k}_{i}" for k in range(2) for i in range(10))
    assert len(list((ws_dir / "images").iterdir())) == 20
    assert _case_files(ws_dir) == {f for c in ws.cases for f in c.files}


def test_concurrent_model_versions_never_overwrite(tmp_path):
    ws_dir = tmp_path / "ws"
    Workspace(ws_dir)
    sources = []
    for k in range(2):
        src = tmp_path / f"model_{k}.safetensors"
        src.write_bytes(f"writer {k}".encode() * 100)
        sources.append(src)
    writers = [_run_child(str(ws_dir), "model", "4", str(src), f"w{k}", background=True)
               for k, src in enumerate(sources)]
    for proc in writers:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    ws = Workspace(ws_dir)
    versions = [v.version for v in ws.versions]
    assert len(versions) == 8 == len(set(versions))
    for v in ws.versions:  # each version holds the bytes of the writer that recorded it
        assert ws.version_path(v.version).read_bytes() == sources[int(v.info["writer"][1])].read_bytes()


def test_two_workspace_objects_get_different_versions(tmp_path):
    a, b = Workspace(tmp_path), Workspace(tmp_path)
    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    va, vb = a.add_model_version(first), b.add_model_version(second)  # b's manifest copy is stale
    assert (va, vb) == ("v0001", "v0002")
    assert a.version_path(va).read_bytes() == b"first"
    assert Workspace(tmp_path).version_path(vb).read_bytes() == b"second"


# ------------------------------------------------------------------------------------------ item 2
#: an update writes and renames image, label, mask, manifest (1-4), commits, then deletes 3 old files
ADD_CASE_POINTS = [f"atomic.{stage}@{i}" for i in range(1, 5) for stage in ("written", "replaced")] \
    + ["workspace.committed"] + [f"workspace.old_removed@{i}" for i in range(1, 4)]


def test_crash_at_every_point_of_add_case_leaves_a_consistent_workspace(tmp_path):
    ws_dir = tmp_path / "ws"
    Workspace(ws_dir).add_case(*_volumes(1), name="c")
    outcomes = set()
    for point in ADD_CASE_POINTS:
        result = _run_child(str(ws_dir), "update", "2", crash=point)
        assert result.returncode == CRASH_EXIT_CODE, (point, result.stderr)
        ws = Workspace(ws_dir)  # opens, cleans up
        image, labels, mask = ws.load_case("c")
        value = int(image.array.flat[0])
        assert value in (1, 2), point
        np.testing.assert_array_equal(labels.array, value)  # never image of one version, label of another
        np.testing.assert_array_equal(mask.array, 1)
        # no orphans left (quarantined); temporaries only those newer than the last commit
        assert {f for f in _case_files(ws_dir) if TEMP_MARKER not in f} == set(ws.case("c").files), point
        commit = (ws_dir / "manifest.json").stat().st_mtime
        assert all(p.stat().st_mtime >= commit for p in _temporaries(ws_dir)), point
        open_dataset(ws.dataset_folder())  # usable for training
        outcomes.add(value)
        ws.add_case(*_volumes(1), name="c", update=True)  # back to version 1 for the next kill
        again = Workspace(ws_dir)  # after a commit, the older temporaries are ours to delete
        assert _case_files(ws_dir) == set(again.case("c").files), point
        assert _temporaries(ws_dir) == [], point
    assert outcomes == {1, 2}  # kills before the commit keep v1, after it v2


def test_crash_at_every_point_of_add_model_version(tmp_path):
    ws_dir = tmp_path / "ws"
    src = tmp_path / "m.safetensors"
    src.write_bytes(b"weights" * 1000)
    Workspace(ws_dir).add_model_version(src)
    points = ["atomic.written@1", "atomic.replaced@1", "atomic.written@2", "atomic.replaced@2",
              "workspace.committed"]
    for point in points:
        result = _run_child(str(ws_dir), "model", "1", str(src), "crash", crash=point)
        assert result.returncode == CRASH_EXIT_CODE, (point, result.stderr)
        ws = Workspace(ws_dir)
        for v in ws.versions:
            assert ws.version_path(v.version).read_bytes() == src.read_bytes()
        on_disk = sorted(p.name for p in (ws_dir / "models").iterdir())
        listed = [v.version for v in ws.versions]
        extra = set(on_disk) - set(listed)  # only folders holding a temporary newer than the last commit
        assert all(_temporaries(ws_dir / "models" / v) for v in extra), point
        ws.add_model_version(src)  # a commit: the temporaries before it are ours to delete
        ws = Workspace(ws_dir)
        on_disk = sorted(p.name for p in (ws_dir / "models").iterdir())
        assert on_disk == [v.version for v in ws.versions], point  # orphan version folders cleaned
        assert _temporaries(ws_dir) == [], point
    assert len(Workspace(ws_dir).versions) >= 2


def test_training_uses_the_manifest_not_a_folder_listing(tmp_path):
    ws = Workspace(tmp_path)
    ws.add_case(*_volumes(1, "a"), name="a")
    ws.add_case(*_volumes(0, "b"), name="b")
    # a stray label file without an image (e.g. copied in by hand) does not break the dataset
    (tmp_path / "labels" / "stray.nii.gz").write_bytes(b"junk")
    dataset = open_dataset(ws.dataset_folder())
    assert [c.name for c in dataset.cases] == ["a", "b"]
    assert dataset.case("a").label_path == (tmp_path / ws.case("a").label).resolve()
    assert dataset.split("labeled")[1].name == "b"


# ------------------------------------------------------------------------------------------ item 3
@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (np.full(SHAPE, 300, np.int32), "value 300"),
        (np.full(SHAPE, -1, np.int32), "negative"),
        (np.full(SHAPE, 1.7, np.float32), "non-integer"),
        (np.full(SHAPE, np.nan, np.float32), "NaN"),
    ],
)
def test_bad_labels_are_refused_not_changed(tmp_path, labels, problem):
    image, _ = _volumes(1, "bad")
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match=rf"case 'bad'.*{problem}"):
        ws.add_case(image, image.with_array(labels, is_label=True))
    assert ws.cases == [] and _case_files(tmp_path) == set()


def test_labels_beyond_the_workspace_classes_and_bad_grids_are_refused(tmp_path):
    ws = Workspace(tmp_path)
    ws.set_num_classes(2)
    image, labels = _volumes(2, "p")
    with pytest.raises(WorkspaceError, match=r"case 'p'.*2 classes"):
        ws.add_case(image, labels)
    nan_image = image.with_array(np.full(SHAPE, np.nan, np.float32))
    with pytest.raises(WorkspaceError, match=r"case 'p'.*NaN"):
        ws.add_case(nan_image, None)
    _, other = _volumes(1, "p", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(WorkspaceError, match=r"case 'p'.*spacing"):
        ws.add_case(image, other)
    assert ws.add_case(image, labels, num_classes=3) == "p"


# ------------------------------------------------------------------------------------------ item 4
def test_names_that_clean_alike_never_replace_each_other(tmp_path):
    ws = Workspace(tmp_path)
    names = [ws.add_case(*_volumes(i, n), name=n) for i, n in
             enumerate(["patient 1", "patient_1", "scan.nii.gz", "scan.nii.gz", "患者一", "患者二"])]
    assert names == ["patient_1", "patient_1-2", "scan.nii.gz", "scan.nii.gz-2", "患者一", "患者二"]
    for i, name in enumerate(names):
        assert int(ws.load_case(name)[1].array.flat[0]) == i
    assert safe_case_name("a/../b") == "a_.._b"
    with pytest.raises(WorkspaceError, match="refused"):  # issue 24: "patient 1" may be another patient
        ws.add_case(*_volumes(2, "x"), name="patient 1", update=True)
    ws.add_case(*_volumes(2, "x"), name="patient_1", update=True)  # an update by the stored name replaces
    assert int(ws.load_case("patient_1")[1].array.flat[0]) == 2
    assert len(ws.cases) == 6 and len(list((tmp_path / "images").iterdir())) == 6


# ------------------------------------------------------------------------------------------ item 5
@pytest.mark.parametrize("bad_path", ["../victim.txt", "ABSOLUTE"])
def test_paths_outside_the_workspace_are_refused(tmp_path, bad_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ws_dir = tmp_path / "ws"
    ws = Workspace(ws_dir)
    ws.add_case(*_volumes(1, "c"), name="c")
    manifest = json.loads((ws_dir / "manifest.json").read_text())
    manifest["cases"]["c"]["label"] = str(victim) if bad_path == "ABSOLUTE" else bad_path
    (ws_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorkspaceError, match="outside the workspace|not a relative path"):
        Workspace(ws_dir)
    with pytest.raises(WorkspaceError):
        ws.remove_case("c")
    assert victim.read_text() == "precious"


def test_the_workspace_records_its_classes_from_the_first_model(tmp_path):
    from sscce_factory import tiny_model_file

    ckpt = tiny_model_file(tmp_path / "m.safetensors", num_classes=3, seed=None, has_dropout=None)
    ws = Workspace(tmp_path / "ws")
    ws.add_model_version(ckpt)
    assert Workspace(tmp_path / "ws").num_classes == 3
    image, labels = _volumes(2, "ok")
    assert ws.add_case(image, labels) == "ok"
    with pytest.raises(WorkspaceError, match=r"case 'too_high'.*3 classes \(0\.\.2\)"):
        ws.add_case(*_volumes(3, "too_high"))
