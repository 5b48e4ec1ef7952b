"""Case names (issue 24): NFD and NFC spellings are one case; an update whose cleaned name differs from the
one asked for, or that would write another case's files, is refused naming both."""

from __future__ import annotations

import unicodedata
import uuid

import numpy as np
import pytest

from napari_sscce import workspace as ws_module
from napari_sscce.io.volume import Volume
from napari_sscce.workspace import Workspace, WorkspaceError, safe_case_name

SHAPE = (4, 5, 6)
NFC = unicodedata.normalize("NFC", "José")
NFD = unicodedata.normalize("NFD", "José")


def _volumes(value: int, name: str = "c"):
    image = Volume(np.full(SHAPE, float(value), np.float32), spacing=(2.0, 1.0, 1.0), metadata={"name": name})
    return image, image.with_array(np.full(SHAPE, value % 2, np.uint8), is_label=True)


def test_nfd_and_nfc_spellings_clean_to_one_name():
    assert NFC != NFD
    assert safe_case_name(NFD) == safe_case_name(NFC) == NFC


def test_an_update_under_the_other_spelling_replaces_the_same_case(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert ws.add_case(*_volumes(1), name=NFC) == NFC
    ws.add_case(*_volumes(1), name="other")
    assert ws.add_case(*_volumes(3), name=NFD, update=True) == NFC
    assert sorted(c.name for c in ws.cases) == sorted([NFC, "other"])
    assert float(ws.load_case(NFD)[0].array.flat[0]) == 3.0
    assert float(ws.load_case("other")[0].array.flat[0]) == 1.0
    assert ws.add_case(*_volumes(4), name=NFD) == f"{NFC}-2"  # without update: a new case, never a replace


def test_an_update_whose_cleaned_name_differs_is_refused_naming_both(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_volumes(1), name="patient_1")
    before = ws.case("patient_1").files
    with pytest.raises(WorkspaceError, match=r"'patient 1'.*'patient_1'"):
        ws.add_case(*_volumes(2), name="patient 1", update=True)
    with pytest.raises(WorkspaceError, match=r"'patient 1'.*'patient_1'"):
        ws.add_unlabeled(_volumes(2)[0], name="patient 1", update=True)
    assert Workspace(tmp_path / "ws").case("patient_1").files == before
    assert float(ws.load_case("patient_1")[0].array.flat[0]) == 1.0


def test_an_old_manifest_with_an_nfd_key_is_found_by_either_spelling(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_case(*_volumes(1), name="x")
    manifest = ws._manifest
    with ws._locked() as data:  # as an older version wrote it on macOS
        data["cases"] = {NFD: {**data["cases"]["x"], "name": NFD}}
        ws._save(data)
    assert manifest is not ws._manifest
    assert ws.case(NFC).name == NFD
    ws.remove_case(NFC)
    assert ws.cases == []


def test_a_case_never_writes_files_of_another_case(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    fixed = uuid.UUID("0123abcd" * 4)
    monkeypatch.setattr(ws_module.uuid, "uuid4", lambda: fixed)  # the same file uid twice
    ws.add_case(*_volumes(1), name="Jose")
    files = {rel: (tmp_path / "ws" / rel).read_bytes() for rel in ws.case("Jose").files}
    with pytest.raises(WorkspaceError, match=r"'jose'.*'Jose'"):  # same file names on a case-blind disk
        ws.add_case(*_volumes(2), name="jose")
    assert {rel: (tmp_path / "ws" / rel).read_bytes() for rel in files} == files
    assert [c.name for c in Workspace(tmp_path / "ws").cases] == ["Jose"]
