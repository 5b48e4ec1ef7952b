"""Nothing lost: kill, concurrency and hostile-file trials of the workspace, run folders and readers.

Issue 12.

Every trial runs real processes:

* **kills at named points**: a child process ends with ``os._exit`` at every write and rename of
  ``Workspace.add_case`` (an update: image, label, mask, manifest, then the old files' removal),
  ``Workspace.add_model_version`` and a training run's checkpoint / state saving
  (``SSCCE_CRASH_AT``, see ``napari_sscce.atomic.crash_point``), ``--repeats`` times each;
* **SIGKILL at random times**: a child updating one case in a loop, and a training run, are killed after a
  random delay;
* after each kill the workspace is opened (it removes the temporaries and orphans the kill left) and checked:
  every case's image and label come from the same version, no file is unreferenced, no temporary is left;
  a killed run resumes (or restarts with ``overwrite``) and finishes;
* **concurrency**: ``--writers`` processes add ``--cases`` cases each and record model versions at once; two
  ``sscce train`` runs start on one folder at once;
* **hostile files**: headers declaring gigabytes, checkpoints declaring huge networks, 4D and multi-series
  inputs: each must be refused (or explained) quickly with the file named;
* **what the workspace owns** (issue 24, :func:`trial_workspace_ownership`, :func:`trial_runs_and_adoption`):
  a child process opens a workspace whose manifest is missing, emptied to ``{"cases": {}}``, of a newer
  format or with a wrong type, whose folders are symlinks into a second workspace, or that holds an orphan;
  adds NFD / NFC spellings of one name, a differently cleaned update and a mirrored label; a fine-tune's
  run folder is left by a killed process; two processes adopt a version at once. Nothing not owned may change
  (byte for byte), orphans go to ``quarantine/``, refusals are messages (exit 2, no traceback), the killed
  run is cleaned at the next open and the adoptions record their true parents.

Results: ``benchmarks/results/reliability.json`` and ``reliability.md``; exit status 1 when any trial failed.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/reliability.py [--repeats 2] [--random-kills 10] [--skip-training]

The trials run side by side (threads driving child processes); each uses its own folders.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from napari_sscce.atomic import (
    CRASH_ENV,
    CRASH_EXIT_CODE,
    TEMP_MARKER,
    atomic_write_bytes,
    atomic_write_json,
)

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SHAPE = (8, 12, 12)
ADD_CASE_POINTS = [f"atomic.{stage}@{i}" for i in range(1, 5) for stage in ("written", "replaced")] \
    + ["workspace.committed"] + [f"workspace.old_removed@{i}" for i in range(1, 4)]
MODEL_POINTS = ["atomic.written@1", "atomic.replaced@1", "atomic.written@2", "atomic.replaced@2",
                "workspace.committed"]
#: a 2-iteration run writes config.json, splits.json, last, best, train_state.pt (atomic writes 1-5)
TRAIN_POINTS = [f"atomic.{stage}@{i}" for i in range(1, 6) for stage in ("written", "replaced")]


# ------------------------------------------------------------------------------------------ children
def _volumes(value: int, name: str = "c"):
    from napari_sscce.io.volume import Volume

    image = Volume(np.full(SHAPE, float(value), np.float32), spacing=(2.0, 1.0, 1.0), metadata={"name": name})
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, : 2 + value % 8] = 1  # the label differs per version (and is learnable)
    return image, image.with_array(labels, is_label=True)


def child(argv: list[str]) -> None:
    """Entry of the child processes (``--child FOLDER KIND ...``)."""
    from napari_sscce.workspace import Workspace

    folder, kind, rest = argv[0], argv[1], argv[2:]
    if kind == "update":  # update case "c" to version rest[0]
        Workspace(folder).add_case(*_volumes(int(rest[0])), name="c", update=True)
    elif kind == "update-loop":  # update case "c" forever, versions 1, 2, 3 ...
        value = 1
        while True:
            Workspace(folder).add_case(*_volumes(value), name="c", update=True)
            value = value % 200 + 1
    elif kind == "cases":  # add rest[0] cases named <rest[1]>_<i>
        for i in range(int(rest[0])):
            Workspace(folder).add_case(*_volumes(i, "x"), name=f"{rest[1]}_{i}")
    elif kind == "models":  # record rest[0] versions of the file rest[1]
        ws = Workspace(folder)
        for i in range(int(rest[0])):
            ws.add_model_version(rest[1], {"writer": rest[2], "i": i})
    elif kind in CHILDREN_24:
        CHILDREN_24[kind](folder, rest)
    elif kind == "train":  # folder: a TrainConfig JSON file
        from napari_sscce.training.config import TrainConfig
        from napari_sscce.training.loop import train

        train(TrainConfig.load(folder))
    else:
        raise SystemExit(f"unknown child {kind}")


def _env(crash: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return env


def _spawn(*args: str, crash: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", *args], env=_env(crash),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run(*args: str, crash: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, "--child", *args], env=_env(crash),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ checks
def _killed(proc: subprocess.Popen) -> list[str]:
    """Problems when a child meant to be killed had ended by itself (an error, not a kill)."""
    code = proc.wait()
    if code == -9:
        return []
    return [f"the child ended by itself (exit {code}): {proc.stderr.read()[-300:]}"]


def leftovers(folder: Path) -> tuple[int, int]:
    """Files a crash left that nothing refers to (temporaries, orphan case / model files) and their bytes.

    Not counted (issue 24): ``quarantine/`` (orphans are moved there, recoverable, never deleted) and
    temporaries newer than the last manifest commit (not provably dead: removed after the next commit)."""
    from napari_sscce.workspace import read_manifest

    manifest = read_manifest(folder) or {"cases": {}, "models": []}
    commit = (folder / "manifest.json").stat().st_mtime if (folder / "manifest.json").is_file() else 0.0
    referenced = {(folder / p).resolve() for e in manifest["cases"].values()
                  for p in (e.get("image"), e.get("label"), e.get("mask")) if p}
    referenced |= {(folder / v["path"]).resolve() for v in manifest["models"]}
    count = size = 0
    for path in folder.rglob("*"):
        if not path.is_file() or path.relative_to(folder).parts[0] == "quarantine":
            continue
        if TEMP_MARKER in path.name and path.stat().st_mtime >= commit:
            continue
        ours = TEMP_MARKER in path.name or path.parent.name in ("images", "labels", "masks") \
            or path.parent.parent.name == "models"
        if ours and path.resolve() not in referenced:
            count, size = count + 1, size + path.stat().st_size
    return count, size


def check_workspace(folder: Path, values: set[int] | None = None) -> tuple[list[str], dict[str, int]]:
    """Open a workspace after a kill; problems found (empty: consistent) and what the opening cleaned."""
    from napari_sscce.io.datasets import open_dataset
    from napari_sscce.workspace import Workspace

    problems = []
    try:
        ws = Workspace(folder)
    except Exception as exc:  # noqa: BLE001 - any failure to open is a lost workspace
        return [f"does not open: {exc}"], {}
    for case in ws.cases:
        try:
            image, labels, mask = ws.load_case(case.name)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"case {case.name} unreadable: {exc}")
            continue
        value = int(image.array.flat[0])
        _, expected = _volumes(value)
        if labels is None or not np.array_equal(labels.array, expected.array):
            problems.append(f"case {case.name}: image of version {value} with another version's label")
        if values is not None and value not in values:
            problems.append(f"case {case.name}: version {value} was never written")
    for v in ws.versions:
        if not ws.version_path(v.version).is_file():
            problems.append(f"model {v.version} missing")
    n, size = leftovers(folder)
    if n:
        problems.append(f"{n} unreferenced files ({size} bytes) left after opening")
    if ws.cases:  # (a workspace holding only models has no dataset)
        try:
            open_dataset(ws.dataset_folder())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"not usable for training: {exc}")
    return problems, ws.cleaned


# ------------------------------------------------------------------------------------------ trials
class Tally:
    """Counts of one kind of trial."""

    def __init__(self, name: str):
        self.name, self.trials, self.failures, self.points = name, 0, [], set()
        self.left_bytes = self.cleaned_bytes = 0
        self.extra: dict = {}

    def add(self, point: str, problems: list[str]) -> None:
        self.trials += 1
        self.points.add(point)
        self.failures += [f"{point}: {p}" for p in problems]

    def to_dict(self) -> dict:
        return {"name": self.name, "trials": self.trials, "distinct_points": len(self.points),
                "failures": self.failures, "bytes_left_by_kills": self.cleaned_bytes,
                "bytes_left_after_reopen": self.left_bytes, **self.extra}


def trial_add_case_points(base: Path, repeats: int) -> Tally:
    from napari_sscce.workspace import Workspace

    tally = Tally("add_case killed at each write / rename (os._exit)")
    folder = base / "ws_points"
    Workspace(folder).add_case(*_volumes(1), name="c")
    for _ in range(repeats):
        for point in ADD_CASE_POINTS:
            result = _run(str(folder), "update", "2", crash=point)
            problems = [] if result.returncode == CRASH_EXIT_CODE else [f"exit {result.returncode}"]
            tally.cleaned_bytes += leftovers(folder)[1]
            found, _ = check_workspace(folder, {1, 2})
            tally.add(point, problems + found)
            tally.left_bytes += leftovers(folder)[1]
            Workspace(folder).add_case(*_volumes(1), name="c", update=True)
    return tally


def trial_add_case_sigkill(base: Path, kills: int, rng: random.Random) -> Tally:
    from napari_sscce.workspace import Workspace

    tally = Tally("add_case loop killed at random times (SIGKILL)")
    folder = base / "ws_sigkill"
    Workspace(folder).add_case(*_volumes(1), name="c")
    for k in range(kills):
        proc = _spawn(str(folder), "update-loop")
        time.sleep(rng.uniform(0.6, 2.5))  # start-up is ~0.5 s: most kills land inside add_case
        proc.kill()
        found = _killed(proc)
        tally.cleaned_bytes += leftovers(folder)[1]
        found += check_workspace(folder)[0]
        tally.add(f"random {k}", found)
        tally.left_bytes += leftovers(folder)[1]
    tally.points = {"random"}
    return tally


def trial_model_points(base: Path, repeats: int) -> Tally:
    from napari_sscce.workspace import Workspace

    tally = Tally("add_model_version killed at each write / rename (os._exit)")
    folder = base / "ws_models"
    src = base / "model.safetensors"
    src.write_bytes(os.urandom(2_000_000))
    Workspace(folder).add_model_version(src)
    for _ in range(repeats):
        for point in MODEL_POINTS:
            result = _run(str(folder), "models", "1", str(src), "crash", crash=point)
            problems = [] if result.returncode == CRASH_EXIT_CODE else [f"exit {result.returncode}"]
            tally.cleaned_bytes += leftovers(folder)[1]
            found, _ = check_workspace(folder)
            ws = Workspace(folder)
            for v in ws.versions:
                if ws.version_path(v.version).read_bytes() != src.read_bytes():
                    found.append(f"model {v.version} differs from its source")
            numbers = [v.version for v in ws.versions]
            if len(set(numbers)) != len(numbers):
                found.append("two models share a version")
            tally.add(point, problems + found)
            tally.left_bytes += leftovers(folder)[1]
    return tally


def _train_config(base: Path, data: Path, out: Path) -> Path:
    from napari_sscce.training.config import TrainConfig

    cfg = TrainConfig(data=str(data), patch_size=(16, 16, 16), labeled_bs=2, unlabeled_bs=0, iterations=2,
                      out=str(out), val_every=0, precision="fp32", base_filters=2, seed=7, has_dropout=False,
                      method="supervised", device="cpu")
    path = base / f"{out.name}.json"
    cfg.save(path)
    return path


def _run_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob(f".*{TEMP_MARKER}*")) if out.is_dir() else 0


def _finish_run(config_path: Path) -> list[str]:
    """Resume (or restart) a killed run in this process; problems found."""
    from napari_sscce.models.checkpoint import load_checkpoint
    from napari_sscce.training.config import TrainConfig
    from napari_sscce.training.loop import STATE_FILE, train

    cfg = TrainConfig.load(config_path)
    out = Path(cfg.out)
    resume = (out / STATE_FILE).exists()
    try:
        result = train(cfg.replace(resume=resume, overwrite=not resume))
        load_checkpoint(out / "last.safetensors")
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    except Exception as exc:  # noqa: BLE001
        return [f"the run does not {'resume' if resume else 'restart'}: {exc}"]
    problems = [] if result.iterations == 2 else [f"finished at {result.iterations}"]
    if _run_bytes(out):
        problems.append("temporaries left after the restart")
    return problems


def trial_training(base: Path, random_kills: int, rng: random.Random) -> Tally:
    from napari_sscce.io.sample_data import make_synthetic_dataset

    tally = Tally("training killed while saving checkpoints (os._exit) or at random (SIGKILL)")
    data = make_synthetic_dataset(base / "data", 3, shape=(16, 16, 16), n_labeled=2, n_val=0, seed=3)
    for k, point in enumerate(TRAIN_POINTS):
        cfg = _train_config(base, data, base / f"run_{k}")
        result = _run(str(cfg), "train", crash=point)
        problems = [] if result.returncode == CRASH_EXIT_CODE else [f"exit {result.returncode}"]
        tally.cleaned_bytes += _run_bytes(base / f"run_{k}")
        tally.add(point, problems + _finish_run(cfg))
        tally.left_bytes += _run_bytes(base / f"run_{k}")
    for k in range(random_kills):
        out = base / f"run_random_{k}"
        cfg = _train_config(base, data, out)
        proc = _spawn(str(cfg), "train")
        time.sleep(rng.uniform(3.0, 12.0))
        proc.kill()
        found = _killed(proc)
        tally.cleaned_bytes += _run_bytes(out)
        tally.add("random", found + _finish_run(cfg))
        tally.left_bytes += _run_bytes(out)
    return tally


def trial_concurrency(base: Path, writers: int, cases: int) -> Tally:
    from napari_sscce.workspace import Workspace

    tally = Tally("concurrent writers")
    folder = base / "ws_concurrent"
    Workspace(folder)
    procs = [_spawn(str(folder), "cases", str(cases), f"w{k}") for k in range(writers)]
    sources = []
    for k in range(writers):
        src = base / f"model_w{k}.safetensors"
        src.write_bytes(f"writer {k} ".encode() * 50_000)
        sources.append(src)
    procs += [_spawn(str(folder), "models", "3", str(src), f"w{k}") for k, src in enumerate(sources)]
    problems = [f"writer exit {p.returncode}: {p.stderr.read()[-300:]}" for p in procs if p.wait() != 0]
    ws = Workspace(folder)
    names = {c.name for c in ws.cases}
    wanted = {f"w{k}_{i}" for k in range(writers) for i in range(cases)}
    if names != wanted:
        problems.append(f"{len(wanted - names)} cases lost")
    images = len(list((folder / "images").iterdir())) if (folder / "images").is_dir() else 0
    if images != len(wanted):
        problems.append(f"{images} images on disk for {len(wanted)} cases")
    versions = [v.version for v in ws.versions]
    if len(set(versions)) != writers * 3:
        problems.append(f"{len(set(versions))} distinct model versions, {writers * 3} recorded")
    for v in ws.versions:
        if ws.version_path(v.version).read_bytes() != sources[int(v.info["writer"][1:])].read_bytes():
            problems.append(f"{v.version} overwritten by another writer")
    tally.add("workspace", problems)
    tally.extra.update(writers=writers, cases_written=len(wanted), cases_kept=len(names & wanted),
                       model_versions_written=writers * 3, model_versions_kept=len(set(versions)))
    return tally


def trial_concurrent_runs(base: Path) -> Tally:
    from napari_sscce.io.sample_data import make_synthetic_dataset

    tally = Tally("two `sscce train` on one --out at once")
    data = make_synthetic_dataset(base / "data_runs", 3, shape=(16, 16, 16), n_labeled=2, n_val=0, seed=3)
    out = base / "shared_run"
    cmd = [sys.executable, "-m", "napari_sscce.cli", "train", "--data", str(data), "--out", str(out),
           "--iterations", "30", "--method", "supervised", "--patch", "16", "16", "16", "--base-filters", "2",
           "--precision", "fp32", "--batch", "2", "0", "--device", "cpu", "--quiet", "--no-dropout"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    problems = []
    if codes != [0, 2]:
        problems.append(f"exit codes {codes}, expected one run (0) and one refusal (2)")
    refused = [err for code, err in results if code == 2]
    if refused and "another training run is using this folder" not in refused[0] \
            and "already holds a training run" not in refused[0]:
        problems.append(f"unclear refusal: {refused[0][-300:]}")
    tally.add("runs", problems)
    return tally


def trial_hostile(base: Path) -> Tally:
    import h5py
    import nibabel as nib
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_sscce.io.readers import read_volume
    from napari_sscce.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_sscce.models.dual import build_dual_model

    tally = Tally("hostile or broken files")
    folder = base / "hostile"
    folder.mkdir()
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((2000, 1000, 1000))
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4
    files = {
        "nifti 608 bytes declaring 7.5 GiB": ("liar.nii", raw + b"\0" * 256),
        "nii.gz declaring 7.5 GiB": ("liar.nii.gz", gzip.compress(raw + b"\0" * 4096)),
        "NRRD raw declaring 7.5 GiB": ("liar.nrrd", b"NRRD0004\ntype: float\ndimension: 3\n"
                                       b"sizes: 1000 1000 2000\nencoding: raw\nendian: little\n\n"
                                       + b"\0" * 64),
        "random bytes .nii.gz": ("noise.nii.gz", os.urandom(4096)),
    }
    cases = []
    for what, (name, data) in files.items():
        (folder / name).write_bytes(data)
        cases.append((what, "volume", folder / name))
    real = folder / "real.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 40), np.float32), np.eye(4)), str(real))
    (folder / "truncated.nii.gz").write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    cases.append(("nii.gz truncated to half", "volume", folder / "truncated.nii.gz"))
    with h5py.File(folder / "liar.h5", "w") as f:
        f.create_dataset("image", shape=(100_000, 100_000, 1000), dtype="f4", chunks=(8, 8, 8))
    cases.append(("h5 declaring 40 TB", "volume", folder / "liar.h5"))
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 3), np.float32), np.eye(4)), str(folder / "four.nii.gz"))
    cases.append(("4D image without --channel", "4d", folder / "four.nii.gz"))
    small = save_checkpoint(folder / "small.safetensors", build_dual_model("cce", base_filters=2), {})
    with safe_open(str(small), "pt") as f:
        meta_header = dict(f.metadata())
    liars = (("checkpoint declaring base_filters 64", "base_filters", 64, False),
             ("checkpoint declaring base_filters 100000", "base_filters", 100000, False),
             ("checkpoint declaring 10^6 classes", "num_classes", 10**6, True))
    for what, key, value, keep in liars:
        meta = json.loads(meta_header["metadata"])
        for net in ("a", "b"):
            meta["arch"][net]["kwargs"][key] = value
        path = folder / f"{key}_{value}.safetensors"
        save_file(load_file(str(small)) if keep else {"a.x": torch.zeros(1)}, str(path),
                  metadata={**meta_header, "metadata": json.dumps(meta)})
        cases.append((what, "checkpoint", path))
    seconds = []
    for what, kind, path in cases:
        start = time.monotonic()
        problems = []
        try:
            load_checkpoint(path) if kind == "checkpoint" else read_volume(path)
            problems.append("accepted")
        except ValueError as exc:  # VolumeError, CheckpointError
            if str(path) not in str(exc):
                problems.append(f"message does not name the file: {exc}")
            if kind == "4d" and "--channel" not in str(exc):
                problems.append("4D message without the --channel advice")
        except Exception as exc:  # noqa: BLE001 - a raw error is a failure
            problems.append(f"raw {type(exc).__name__}: {exc}")
        took = time.monotonic() - start
        seconds.append(took)
        if took > 10:
            problems.append(f"took {took:.1f} s")
        tally.add(what, problems)
    tally.extra["max_seconds"] = round(max(seconds), 3)
    return tally


#: runs ``sscce`` (its ``main``) and reports the process's own peak memory (VmHWM; ``ru_maxrss`` of a child
#: would include the parent's memory at fork time)
_SSCCE_PEAK = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
    "    sys.stderr.write('\\nPEAK_KB ' + (hwm[0].split()[1] if hwm else '0') + '\\n')\n"
    "atexit.register(_peak)\n"
    "from napari_sscce.cli import main\n"
    "sys.argv = ['sscce', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


def _sscce(*args: str, timeout: float = 300) -> tuple[int, str, float, float]:
    """Run a real ``sscce`` process: (exit status, stderr, seconds, its peak resident memory in MiB)."""
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", _SSCCE_PEAK, *args], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        code, err = proc.returncode, proc.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as exc:
        code, err = -9, (exc.stderr or b"").decode("utf-8", "replace") + "\ntimed out"
    peak = 0.0
    kept = []
    for line in err.splitlines():
        if line.startswith("PEAK_KB "):
            peak = int(line.split()[1]) / 1024
        else:
            kept.append(line)
    return code, "\n".join(kept), time.monotonic() - start, peak


def _hostile_inputs_2(folder: Path) -> list[tuple[str, list[str], str, str]]:
    """Issue 24's classes as files: (what, sscce arguments, expected outcome, text the message must hold).

    Outcomes: ``"refused"`` (non-zero exit, no traceback, the named file in the message), ``"ok"``.
    """
    import bz2
    import struct
    import zlib

    import h5py
    import nibabel as nib
    import SimpleITK as sitk

    from napari_sscce.models.checkpoint import save_checkpoint
    from napari_sscce.models.dual import build_dual_model

    folder.mkdir()
    model = save_checkpoint(folder / "model.safetensors", build_dual_model("cce", base_filters=2),
                            {"method": "cce", "spacing": [1.0, 1.0, 1.0], "patch_size": [8, 8, 8]})
    out = str(folder / "out")
    cases = []

    def predict(what, path, expect, text):
        cases.append((what, ["predict", str(path), "--model", str(model), "--out", out, "--device", "cpu"],
                      expect, text))

    nrrd_head = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: {}\n{}\n"
    bomb = folder / "bomb_bz2.nrrd"
    bomb.write_bytes(nrrd_head.format("bzip2", "").encode() + bz2.compress(b"\0" * (1 << 30)))
    predict(f"bzip2 NRRD of {bomb.stat().st_size} bytes inflating to 1 GiB", bomb, "refused",
            "inflate to more")
    gz = folder / "bomb_gz.nrrd"
    gz.write_bytes(nrrd_head.format("gzip", "").encode() + gzip.compress(b"\0" * (1 << 30), 9))
    predict(f"gzip NRRD of {gz.stat().st_size // 1024} KiB inflating to 1 GiB", gz, "refused",
            "inflate to more")
    case = folder / "case"
    case.mkdir()
    (folder / "secret.raw").write_bytes(b"\7" * 512)
    nhdr = case / "detached.nhdr"
    nhdr.write_bytes(nrrd_head.format("raw", "data file: ../secret.raw\n").encode())
    predict("detached NRRD data file outside the folder", nhdr, "refused", "outside the header's folder")
    mhd_text = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = True\n"
                "CompressedDataSize = 99\nElementSpacing = 1 1 1\nDimSize = 8 8 8\n"
                "ElementType = MET_SHORT\nElementDataFile = {}\n")
    (folder / "zero.mhd").write_text(mhd_text.format("/dev/zero"))
    predict("compressed MetaImage pointing at /dev/zero", folder / "zero.mhd", "refused", "/dev/zero")
    (folder / "corrupt.zraw").write_bytes(b"not zlib at all" * 20)
    (folder / "corrupt.mhd").write_text(mhd_text.format("corrupt.zraw"))
    predict("corrupt compressed MetaImage", folder / "corrupt.mhd", "refused", "corrupt")
    (folder / "short.zraw").write_bytes(zlib.compress(b"\1" * 100))
    (folder / "short.mhd").write_text(mhd_text.format("short.zraw"))
    predict("compressed MetaImage inflating short", folder / "short.mhd", "refused", "inflate to only")
    with h5py.File(folder / "other.h5", "w") as f:
        f["image"] = np.ones((8, 8, 8), np.float32)
    with h5py.File(case / "link.h5", "w") as f:
        f["image"] = h5py.ExternalLink(str(folder / "other.h5"), "image")
    predict("HDF5 external link outside the folder", case / "link.h5", "refused", "external link")
    layout = h5py.VirtualLayout(shape=(8, 8, 8), dtype="f4")
    layout[:] = h5py.VirtualSource(str(folder / "other.h5"), "image", shape=(8, 8, 8))
    with h5py.File(case / "virtual.h5", "w") as f:
        f.create_virtual_dataset("image", layout)
    predict("HDF5 virtual dataset outside the folder", case / "virtual.h5", "refused", "virtual dataset")
    data = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for what, size in (("NIfTI with spacing in metres (0.001)", 0.001), ("NIfTI with 100 mm voxels", 100.0)):
        path = folder / f"spacing_{size:g}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([size, size, size, 1.0])), str(path))
        predict(what, path, "refused", "away from the model's")
    singular = np.eye(4)
    singular[:3, 1] = singular[:3, 0]
    nib.save(nib.Nifti1Image(data, singular), str(folder / "singular.nii.gz"))
    predict("NIfTI with a singular affine", folder / "singular.nii.gz", "refused", "singular")
    good = folder / "good.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(good))
    bad_models = (("model spacing -1", {"spacing": [-1, 1, 1]}), ("model spacing 0", {"spacing": [0, 1, 1]}),
                  ("model spacing 'abc'", {"spacing": "abc"}),
                  ("model spacing 0.01 mm", {"spacing": [0.01] * 3}),
                  ("model patch 0", {"patch_size": [0, 8, 8]}))
    for what, meta in bad_models:
        bad = save_checkpoint(folder / f"bad_{len(cases)}.safetensors",
                              build_dual_model("cce", base_filters=2), {"method": "cce", **meta})
        cases.append((what, ["predict", str(good), "--model", str(bad), "--out", out, "--device", "cpu"],
                      "refused", str(bad) if "0.01" not in what else "away from the model's"))
    nested = "[" * 100_000 + "]" * 100_000
    raw = (json.dumps({"__metadata__": {"format": "napari-sscce"}})[:-1] + f', "x": {nested}}}').encode()
    deep = folder / "deep.safetensors"
    deep.write_bytes(struct.pack("<Q", len(raw)) + raw)
    cases.append(("model file with deeply nested JSON",
                  ["predict", str(good), "--model", str(deep), "--out", out], "refused", "nest"))
    dicom = folder / "dicom_dup"
    dicom.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, z in enumerate([0.0, 2.5, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0]):
        img = sitk.GetImageFromArray(np.full((1, 16, 16), i, np.int16))[:, :, 0]
        tags = {"0020|000e": "1.2.826.0.9", "0020|0013": str(i + 1), "0020|0032": f"0\\0\\{z}",
                "0020|0037": "1\\0\\0\\0\\1\\0", "0008|0060": "CT", "0020|000d": "1.2.3"}
        for tag, value in tags.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(dicom / f"s{i:03d}.dcm"))
        writer.Execute(img)
    predict("DICOM series with duplicated slice positions", dicom, "refused", "share a position")
    for sub in ("a", "b"):
        (folder / sub).mkdir()
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / sub / "scan.nii.gz"))
    cases.append(("two inputs named scan.nii.gz in different folders",
                  ["predict", str(folder / "a" / "scan.nii.gz"), str(folder / "b" / "scan.nii.gz"), "--model",
                   str(model), "--out", str(folder / "same_names"), "--device", "cpu"], "both_outputs", ""))
    label = np.zeros((10, 12, 14), np.uint8)
    label[1:6, 2:9, 3:7] = 1
    label[6:9, 8:11, 9:13] = 2
    mirror = np.diag([-1.0, 1, 1, 1])
    mirror[0, 3] = label.shape[0] - 1
    for sub, array, affine in (("gt", label, np.eye(4)), ("pred_mirror", label[::-1].copy(), mirror)):
        (folder / sub).mkdir()
        nib.save(nib.Nifti1Image(array, affine), str(folder / sub / "case.nii.gz"))
    cases.append(("evaluate: prediction stored mirrored (same anatomy)",
                  ["evaluate", "--pred", str(folder / "pred_mirror"), "--gt", str(folder / "gt"), "--out",
                   str(folder / "metrics_mirror")], "dice_1", ""))
    stray = label.copy()
    stray[0, 0, 0] = 255
    (folder / "gt_stray").mkdir()
    nib.save(nib.Nifti1Image(stray, np.eye(4)), str(folder / "gt_stray" / "case.nii.gz"))
    (folder / "pred_same").mkdir()
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(folder / "pred_same" / "case.nii.gz"))
    cases.append(("evaluate: a stray 255 in a 3-class ground truth",
                  ["evaluate", "--pred", str(folder / "pred_same"), "--gt", str(folder / "gt_stray")],
                  "refused", "unexpected label value(s) 255"))
    return cases


def trial_hostile_inputs_2(base: Path) -> Tally:
    """Issue 24 (reader / geometry / input half): each case through a real ``sscce`` process."""
    tally = Tally("hostile inputs, part 2 (bombs, external data, geometry, units, DICOM, names)")
    cases = _hostile_inputs_2(base / "hostile2")
    seconds, peaks = [], []

    def one(case):
        what, args, expect, text = case
        code, err, took, rss = _sscce(*args)
        problems = []
        if "Traceback" in err:
            problems.append(f"traceback: {err.strip().splitlines()[-1]}")
        if expect == "refused":
            named = [a for a in args[1:] if os.path.sep in a][:1]
            if code == 0:
                problems.append("accepted (exit 0)")
            elif text and text not in err:
                problems.append(f"message lacks {text!r}: {err.strip()[-300:]}")
            elif named and named[0] not in err and text not in err:
                problems.append(f"message does not name the file: {err.strip()[-300:]}")
        elif expect == "both_outputs":
            out = Path(args[args.index("--out") + 1])
            both = (out / "scan_seg.nii.gz").is_file() and (out / "scan-2_seg.nii.gz").is_file()
            if code != 0 or not both:
                problems.append(f"exit {code}, outputs {sorted(p.name for p in out.glob('*_seg.nii.gz'))}")
        elif expect == "dice_1":
            out = Path(args[args.index("--out") + 1]) / "metrics.json"
            rows = json.loads(out.read_text())["rows"] if out.is_file() else []
            mean = [r["dice"] for r in rows if r.get("case") == "case" and r.get("class") == "mean"]
            if code != 0 or not mean or abs(mean[0] - 1.0) > 1e-9:
                problems.append(f"exit {code}, mean Dice {mean}")
        return what, problems, took, rss, err.strip().splitlines()[-1][:200] if err.strip() else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, cases))
    messages = {}
    for what, problems, took, rss, message in results:
        tally.add(what, problems)
        seconds.append(took)
        peaks.append(rss)
        messages[what] = message
        tally.extra.setdefault("peak_mib", {})[what] = round(rss, 1)
    tally.extra["max_seconds"] = round(max(seconds), 3)
    tally.extra["max_process_seconds"] = round(max(seconds), 1)
    tally.extra["messages"] = messages
    tally.extra["max_process_peak_mib"] = round(max(peaks), 1)
    return tally


# ------------------------------------------------------------------------------------------ report
# ------------------------------------------------------------------------ issue 24: what the workspace owns
def _child_open(folder: str, rest: list[str]) -> None:
    """Open a workspace (its clean-up runs); print its notes; a refusal is a message, exit 2."""
    from napari_sscce.workspace import Workspace, WorkspaceError

    try:
        ws = Workspace(folder)
    except WorkspaceError as exc:
        print(exc)
        raise SystemExit(2) from None
    print(json.dumps({"cleaned": ws.cleaned, "notes": getattr(ws, "notes", []),
                      "runs_freed": getattr(ws, "runs_freed", 0)}))


def _child_add(folder: str, rest: list[str]) -> None:
    """Add case ``rest[0]`` with value ``rest[1]`` (``rest[2] == "update"``: update; ``"mirror"``: the label
    mirrored along x); a refusal is a message, exit 2."""
    from napari_sscce.io.volume import Volume
    from napari_sscce.workspace import Workspace, WorkspaceError

    image, labels = _volumes(int(rest[1]))
    if rest[2] == "mirror":
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, 2] * (SHAPE[2] - 1)
        affine[:3, 2] *= -1
        labels = Volume(np.ascontiguousarray(np.asarray(labels.array)[:, :, ::-1]), spacing=image.spacing,
                        affine=affine, is_label=True)
    try:
        print(Workspace(folder).add_case(image, labels, name=rest[0], update=rest[2] == "update"))
    except WorkspaceError as exc:
        print(exc)
        raise SystemExit(2) from None


def _child_adopt(folder: str, rest: list[str]) -> None:
    """Adopt the checkpoint ``rest[0]`` started from ``rest[1]``; print version, current, parent."""
    from napari_sscce.workspace import Workspace

    done = Workspace(folder).adopt_version(rest[0], started_from=rest[1])
    print(done.version, done.current, done.parent)


def _child_killed_run(folder: str, rest: list[str]) -> None:
    """Start a run folder, write a checkpoint into it, then die as a killed fine-tune would."""
    from napari_sscce.workspace import Workspace

    run = Workspace(folder).new_run_folder()
    (run / "model").mkdir()
    (run / "model" / "best.safetensors").write_bytes(os.urandom(int(rest[0])))
    print(run, flush=True)
    os._exit(9)


CHILDREN_24 = {"open": _child_open, "add": _child_add, "adopt": _child_adopt, "killed-run": _child_killed_run}


def _files(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (symlinks not followed): relative path -> bytes."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(folder))] = path.read_bytes()
    return out


def _filled(folder: Path, cases: int = 2) -> None:
    """A workspace with ``cases`` cases and one 1 MB model version."""
    from napari_sscce.workspace import Workspace

    ws = Workspace(folder)
    for i in range(cases):
        ws.add_case(*_volumes(i + 1), name=f"p{i}")
    model = folder.parent / f"{folder.name}.safetensors"
    model.write_bytes(os.urandom(1_000_000))
    ws.add_model_version(model)


def _manifest_edit(folder: Path, change) -> None:
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def _ownership_cases(base: Path) -> list[tuple[str, Any]]:
    """(what, check(folder) -> problems) for each hostile workspace of issue 24."""
    import unicodedata

    def untouched(prepare, expect_exit: int = 0, text: str = ""):
        def check(folder: Path) -> list[str]:
            _filled(folder)
            watched = prepare(folder)
            watched = watched if isinstance(watched, Path) else folder
            before = _files(watched)
            result = _run(str(folder), "open", timeout=120)
            problems = [f"exit {result.returncode}, expected {expect_exit}: {result.stderr[-200:]}"] \
                if result.returncode != expect_exit else []
            if "Traceback" in result.stderr:
                problems.append("a traceback")
            if text and text not in result.stdout:
                problems.append(f"the message lacks {text!r}: {result.stdout[-200:]}")
            after = _files(watched)
            lost = [k for k in before if k not in after or (after[k] != before[k] and k != "manifest.json")]
            return problems + ([f"{len(lost)} files changed or lost, e.g. {lost[0]}"] if lost else [])
        return check

    def symlinked(folder: Path) -> Path:
        other = folder.parent / f"{folder.name}_other"
        _filled(other, 3)
        import shutil

        for sub in ("images", "labels", "masks", "models"):
            shutil.rmtree(folder / sub)
            (folder / sub).symlink_to(other / sub, target_is_directory=True)
        _manifest_edit(folder, lambda d: d.update(cases={}, models=[], current=None))
        return other

    def orphan(folder: Path) -> list[str]:
        _filled(folder)
        stray = folder / "labels" / "gone__0123abcd.nii.gz"
        stray.write_bytes(b"a person's label")
        result = _run(str(folder), "open", timeout=120)
        moved = list((folder / "quarantine").rglob("gone__0123abcd.nii.gz"))
        if result.returncode or not moved or moved[0].read_bytes() != b"a person's label":
            return [f"the orphan was not quarantined intact (exit {result.returncode})"]
        return []

    def nfd(folder: Path) -> list[str]:
        nfc_name, nfd_name = (unicodedata.normalize(f, "José") for f in ("NFC", "NFD"))
        _run(str(folder), "add", nfc_name, "1", "new")
        _run(str(folder), "add", "other", "2", "new")
        result = _run(str(folder), "add", nfd_name, "3", "update")
        from napari_sscce.workspace import Workspace

        ws = Workspace(folder)
        names = sorted(c.name for c in ws.cases)
        problems = [] if names == sorted([nfc_name, "other"]) else [f"cases {names}"]
        if result.returncode or int(ws.load_case("other")[0].array.flat[0]) != 2:
            problems.append(f"the NFD update did not replace the NFC case alone (exit {result.returncode})")
        refused = _run(str(folder), "add", "other ", "4", "update")
        if refused.returncode != 2 or "refused" not in refused.stdout or "Traceback" in refused.stderr:
            problems.append("an update under a name that cleans differently was not refused with a message")
        return problems

    def mirrored(folder: Path) -> list[str]:
        result = _run(str(folder), "add", "m", "3", "mirror")
        if result.returncode != 2 or "mirrored" not in result.stdout or "Traceback" in result.stderr:
            return [f"a mirrored label was not refused with a message: {result.stdout[-200:]}"]
        return []

    return [
        ("manifest.json missing", untouched(lambda f: (f / "manifest.json").unlink())),
        ('manifest {"cases": {}}', untouched(lambda f: (f / "manifest.json").write_text('{"cases": {}}'))),
        ("images/ labels/ masks/ models/ symlinked into a second workspace", untouched(symlinked)),
        ("manifest of a newer format", untouched(lambda f: _manifest_edit(f, lambda d: d.update(format=99)),
                                                 2, "newer napari-sscce")),
        ("manifest with a wrong type", untouched(lambda f: _manifest_edit(f, lambda d: d.update(models={})),
                                                 2, "'models' must be a list")),
        ("orphan case file", orphan),
        ("NFD / NFC spellings and a differently cleaned update", nfd),
        ("label mirrored along x (same shape and spacing)", mirrored),
    ]


def trial_workspace_ownership(base: Path) -> Tally:
    """Issue 24: opening or updating a hostile workspace in a real process loses nothing it does not own."""
    tally = Tally("workspace ownership (issue 24): missing / emptied manifests, symlinks, names, grids")
    for i, (what, check) in enumerate(_ownership_cases(base)):
        folder = base / f"own_{i}" / "ws"
        folder.parent.mkdir(parents=True)
        try:
            tally.add(what, check(folder))
        except Exception as exc:  # noqa: BLE001 - a crash of the check is a failure of the trial
            tally.add(what, [f"the check crashed: {type(exc).__name__}: {exc}"])
    return tally


def trial_runs_and_adoption(base: Path) -> Tally:
    """Issue 24: killed runs' folders cleaned at the next open, concurrent adoptions record true parents."""
    from napari_sscce.workspace import RUN_MARKER, Workspace

    tally = Tally("run folders and concurrent adoption (issue 24)")
    folder = base / "ws_runs"
    _filled(folder, 1)
    result = subprocess.run([sys.executable, __file__, "--child", str(folder), "killed-run", "2000000"],
                            env=_env(), capture_output=True, text=True, timeout=120)
    killed = Path(result.stdout.strip() or folder)
    tally.cleaned_bytes += 2_000_000
    opened = _run(str(folder), "open", timeout=120)
    problems = [] if opened.returncode == 0 else [f"open exit {opened.returncode}"]
    if (killed / "model" / "best.safetensors").exists():
        problems.append("the killed run's checkpoint is still there")
        tally.left_bytes += 2_000_000
    marker_file = killed / RUN_MARKER
    marker = json.loads(marker_file.read_text(encoding="utf-8")) if marker_file.is_file() else {}
    if marker.get("state") != "killed":
        problems.append(f"the killed run is marked {marker.get('state')!r}")
    tally.add("killed fine-tune", problems)
    sources = []
    for name in ("a", "b"):
        src = base / f"adopt_{name}.safetensors"
        src.write_bytes(os.urandom(100_000))
        sources.append(src)
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(folder), "adopt", str(src), "v0001"],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src in sources]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    ws = Workspace(folder)
    problems = []
    if [o[1:] for o in outs] != [["True", "v0001"], ["False", "v0002"]]:
        problems.append(f"adoptions {outs}: one current with parent v0001, the other not, parent v0002")
    parents = [v.info.get("parent") for v in ws.versions]
    if parents != [None, "v0001", "v0002"] or ws.current_version != "v0002":
        problems.append(f"recorded parents {parents}, current {ws.current_version}")
    tally.add("two fine-tunes adopting at once", problems)
    return tally


def write_report(tallies: list[Tally], out: Path, args: argparse.Namespace, seconds: float) -> bool:
    rows = [t.to_dict() for t in tallies]
    if args.only and (out / "reliability.json").is_file():  # replace only the rows run again
        previous = json.loads((out / "reliability.json").read_text())
        fresh = {r["name"]: r for r in rows}
        rows = [fresh.pop(r["name"], r) for r in previous["trials"]] + list(fresh.values())
        seconds += previous.get("seconds", 0.0)
    ok = all(not r["failures"] for r in rows)
    report = {"ok": ok, "seconds": round(seconds, 1), "repeats": args.repeats,
              "random_kills": args.random_kills, "trials": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "reliability.json", report)
    lines = [
        "# Reliability trials (benchmarks/reliability.py)",
        "",
        f"{'All trials passed' if ok else 'FAILURES'}; {seconds / 60:.1f} min on CPU. Kills at named points "
        "use `SSCCE_CRASH_AT` (`os._exit` at a write or rename); random kills are SIGKILL.",
        "",
        "| trial | trials | distinct points | failures | bytes left by the kills | bytes left after reopen |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['trials']} | {r['distinct_points']} | {len(r['failures'])} | "
                     f"{r['bytes_left_by_kills']:,} | {r['bytes_left_after_reopen']:,} |")
    conc = next((r for r in rows if "cases_kept" in r), None)
    if conc:
        lines += ["", f"Concurrent writers: {conc['writers']} processes wrote {conc['cases_written']} cases, "
                      f"{conc['cases_kept']} kept; {conc['model_versions_written']} model versions recorded, "
                      f"{conc['model_versions_kept']} distinct, none overwritten."]
    part2 = next((r for r in rows if "messages" in r), None)
    hostile = next((r for r in rows if "max_seconds" in r and "messages" not in r), None)
    if hostile:
        lines += ["", f"Hostile files: {hostile['trials']} tried, each refused with the file named in at "
                      f"most {hostile['max_seconds']} s."]
    if part2:
        lines += ["", f"Hostile inputs, part 2 (issue 24): {part2['trials']} cases, each a real `sscce` "
                      f"process (at most {part2['max_process_seconds']} s including start-up, "
                      "peak resident memory (VmHWM) of any at most "
                      f"{part2.get('max_process_peak_mib', 0):.0f} MiB "
                      "against 1 GiB bombs); what each said (peak memory in brackets):", ""]
        peaks = part2.get("peak_mib", {})
        lines += [f"- {what} ({peaks.get(what, 0):.0f} MiB): `{msg}`"
                  for what, msg in part2["messages"].items()]
    failures = [f for r in rows for f in r["failures"]]
    if failures:
        lines += ["", "## Failures", "", *[f"- {f}" for f in failures[:50]]]
    atomic_write_bytes(out / "reliability.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return ok


def _preload() -> None:
    """Import every module the trials use before the threads start (imports racing in threads can fail)."""
    import h5py  # noqa: F401
    import nibabel  # noqa: F401
    import safetensors.torch  # noqa: F401

    import napari_sscce.io.datasets  # noqa: F401
    import napari_sscce.io.sample_data  # noqa: F401
    import napari_sscce.models.checkpoint  # noqa: F401
    import napari_sscce.models.dual  # noqa: F401
    import napari_sscce.training.loop  # noqa: F401
    import napari_sscce.workspace  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="kills at each named point (default 2)")
    p.add_argument("--random-kills", type=int, default=10, help="SIGKILLs of the add_case loop (default 10)")
    p.add_argument("--train-random-kills", type=int, default=2, help="SIGKILLs of training runs (default 2)")
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--cases", type=int, default=5, help="cases per concurrent writer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--skip-training", action="store_true", help="leave out the (slow) training trials")
    p.add_argument("--only", nargs="+", metavar="TRIAL", help="run only these trial functions (e.g. "
                   "trial_model_points) and replace their rows in an existing reliability.json")
    args = p.parse_args(argv)
    start = time.monotonic()
    _preload()
    with tempfile.TemporaryDirectory(prefix="sscce-reliability-") as tmp:
        base = Path(tmp)
        jobs = [
            (trial_add_case_points, (base, args.repeats)),
            (trial_add_case_sigkill, (base, args.random_kills, random.Random(args.seed))),
            (trial_model_points, (base, args.repeats)),
            (trial_concurrency, (base, args.writers, args.cases)),
            (trial_hostile, (base,)),
            (trial_hostile_inputs_2, (base,)),
            (trial_workspace_ownership, (base,)),
            (trial_runs_and_adoption, (base,)),
        ]
        if not args.skip_training:
            jobs += [(trial_training, (base, args.train_random_kills, random.Random(args.seed + 1))),
                     (trial_concurrent_runs, (base,))]
        if args.only:
            jobs = [job for job in jobs if job[0].__name__ in args.only]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:  # independent folders: run them side by side
            futures = [pool.submit(fn, *fn_args) for fn, fn_args in jobs]
            tallies = [f.result() for f in futures]
        ok = write_report(tallies, args.out, args, time.monotonic() - start)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        sys.exit(main())
