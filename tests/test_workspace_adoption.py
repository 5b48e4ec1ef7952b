"""Concurrent adoption (issue 24): registering a version and making it current happen in one step under the
workspace lock; the record names the true parent; a run that compared against a model no longer current is
kept as a version, not made current."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import napari_sscce
from napari_sscce.workspace import Workspace

SRC = str(Path(napari_sscce.__file__).resolve().parents[1])


def _model(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(name.encode() * 50)
    return path


def test_an_adoption_records_its_parent_and_where_it_started(tmp_path):
    ws = Workspace(tmp_path / "ws")
    start = ws.add_model_version(_model(tmp_path, "start"))
    done = ws.adopt_version(_model(tmp_path, "a"), {"method": "cce"}, started_from=start)
    assert done.current and done.parent == start and done.reason is None
    record = ws.versions[-1].info
    assert record["parent"] == start and record["started_from"] == start and record["method"] == "cce"
    assert Workspace(tmp_path / "ws").current_version == done.version
    rejected = ws.adopt_version(_model(tmp_path, "b"), started_from=done.version, adopt=False)
    assert not rejected.current and rejected.reason is None and ws.current_version == done.version


def test_two_threads_adopting_at_once_serialise_and_record_the_true_parent(tmp_path):
    Workspace(tmp_path / "ws").add_model_version(_model(tmp_path, "start"))
    barrier = threading.Barrier(2)
    results = {}

    def adopt(name: str) -> None:
        ws = Workspace(tmp_path / "ws")  # each its own object and lock handle, both started from v0001
        barrier.wait()
        results[name] = ws.adopt_version(_model(tmp_path, name), started_from="v0001")

    threads = [threading.Thread(target=adopt, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    first, second = sorted(results.values(), key=lambda r: r.version)
    assert (first.version, second.version) == ("v0002", "v0003")
    assert first.current and first.parent == "v0001"
    assert not second.current and second.parent == "v0002" and second.started_from == "v0001"
    assert "v0002 was made current by another fine-tune" in second.reason
    ws = Workspace(tmp_path / "ws")
    assert ws.current_version == "v0002"
    assert ws.versions[-1].info["parent"] == "v0002" and "not_adopted" in ws.versions[-1].info


CHILD = """
import sys
from napari_sscce.workspace import Workspace
ws = Workspace(sys.argv[1])
result = ws.adopt_version(sys.argv[2], started_from="v0001")
print(result.version, result.current, result.parent)
"""


def test_two_processes_adopting_at_once_leave_one_current_and_true_parents(tmp_path):
    Workspace(tmp_path / "ws").add_model_version(_model(tmp_path, "start"))
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "ws"), str(_model(tmp_path, n))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in ("a", "b")]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert [o[0] for o in outs] == ["v0002", "v0003"], outs
    assert outs[0][1:] == ["True", "v0001"] and outs[1][1:] == ["False", "v0002"]
    ws = Workspace(tmp_path / "ws")
    assert ws.current_version == "v0002"
    assert [v.info["parent"] for v in ws.versions] == [None, "v0001", "v0002"]
