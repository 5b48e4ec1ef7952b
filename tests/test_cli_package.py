"""The ``sscce`` package's shared behaviour: Ctrl-C is a clean cancel for every subcommand (exit 130, one
line, nothing half-written), one error line per failure (``--debug`` shows the traceback), one progress
adapter, and packaged model names wherever a starting model is asked for."""

from __future__ import annotations

import argparse
import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sscce.atomic import TEMP_MARKER
from napari_sscce.cli import build_parser, main
from napari_sscce.cli import finetune as finetune_cmd
from napari_sscce.cli import predict as predict_cmd
from napari_sscce.cli import train as train_cmd
from napari_sscce.cli._common import (
    EXIT_CANCELLED,
    ProgressPrinter,
    UserError,
    describe_error,
    run_command,
    sigint_cancels,
)
from napari_sscce.io.sample_data import make_synthetic
from napari_sscce.io.writers import write_volume
from napari_sscce.progress import CancelToken, ProgressEvent
from napari_sscce.workspace import Workspace
from sscce_factory import tiny_model_file

SRC = Path(__file__).resolve().parents[1] / "src"
SHAPE = (16, 32, 32)
SPACING = (2.0, 1.0, 1.0)
FAST = ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def tiny_model(tmp_path):
    return tiny_model_file(tmp_path / "tiny.safetensors", base_filters=2, patch_size=list(SHAPE),
                           normalization={"mode": "zscore"})


@pytest.fixture
def packaged(tmp_path, tiny_model, monkeypatch):
    """The tiny model packaged as ``hippocampus-cce`` (a models folder of the test's own)."""
    folder = tmp_path / "packaged"
    folder.mkdir()
    path = folder / "hippocampus-cce.safetensors"
    path.write_bytes(tiny_model.read_bytes())
    monkeypatch.setenv("NAPARI_SSCCE_MODELS_DIR", str(folder))
    return path


def _workspace(folder: Path, cases: int = 2) -> Workspace:
    ws = Workspace(folder)
    for seed in range(1, cases + 1):
        image, gt = make_synthetic(SHAPE, SPACING, seed=seed, num_classes=2)
        mask = np.zeros(SHAPE, np.uint8)
        mask[[3, 6, 9, 12]] = 1
        ws.add_case(image, gt, image.with_array(mask, is_label=True), name=f"c{seed}")
    return ws


def _scan(path: Path, shape=SHAPE, seed: int = 0) -> Path:
    image, _ = make_synthetic(shape, SPACING, seed=seed, num_classes=2)
    return write_volume(image, path)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name]


def _cancel_at(stage: str, token_box: list, after: int = 1):
    """A progress callback that cancels the run at the ``after``-th event of ``stage`` with a step."""
    seen = []

    def progress(event: ProgressEvent) -> None:
        if event.stage == stage and event.step:
            seen.append(event)
            if len(seen) >= after:
                token_box[0].cancel()

    return progress


def _run(argv: list[str], progress) -> tuple[int, CancelToken]:
    """Parse ``argv`` and run its subcommand through the shared surface with ``progress``."""
    args = build_parser().parse_args(argv)
    token = CancelToken()
    func = functools.partial(args.func, progress=progress)
    return run_command(args.command, func, args, token), token


# ------------------------------------------------------------------------------------------ cancel
def test_a_cancelled_finetune_adds_no_version_and_exits_130(tmp_path, tiny_model, capsys):
    ws = _workspace(tmp_path / "ws", cases=1)
    argv = ["finetune", "--workspace", str(ws.folder), "--model", str(tiny_model), "--iterations", "50",
            *FAST, "--quiet"]
    args = build_parser().parse_args(argv)
    token = CancelToken()
    progress = _cancel_at("train", [token], after=2)
    code = run_command("finetune", functools.partial(finetune_cmd.run, progress=progress), args, token)
    captured = capsys.readouterr()
    assert code == EXIT_CANCELLED
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sscce finetune: cancelled after")
    assert "stays in use" in lines[0] and "Traceback" not in captured.err
    ws.reload()
    assert [v.version for v in ws.versions] == ["v0001"] and ws.current_version == "v0001"
    models = ws.version_path("v0001").parent
    assert sorted(p.name for p in models.glob("*.safetensors")) == [ws.version_path("v0001").name]
    assert not _temporaries(ws.folder)


def test_a_cancelled_predict_writes_nothing_for_the_unfinished_input(tmp_path, tiny_model, capsys):
    first, second = _scan(tmp_path / "a.nii.gz", seed=1), _scan(tmp_path / "b.nii.gz", (32, 64, 64), seed=2)
    out = tmp_path / "out"
    token = CancelToken()
    seen_files = []

    def progress(event: ProgressEvent) -> None:  # cancel inside the second file's windows
        if event.stage == "files" and "done" in event.message:
            seen_files.append(event)
        elif event.stage == "inference" and event.step and seen_files:
            token.cancel()

    args = build_parser().parse_args(["predict", "--model", str(tiny_model), str(first), str(second),
                                      "--out", str(out), "--overlap", "0.5", *FAST])
    code = run_command("predict", functools.partial(predict_cmd.run, progress=progress), args, token)
    captured = capsys.readouterr()
    assert code == EXIT_CANCELLED
    assert captured.err.strip().splitlines() == ["sscce predict: cancelled; nothing unfinished was kept"]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_entropy.nii.gz", "a_kl.nii.gz", "a_seg.nii.gz"]  # b: nothing, not even a temporary


def test_a_cancelled_train_keeps_its_resumable_state_and_exits_130(tmp_path, capsys):
    from napari_sscce.io.sample_data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", 3, shape=(16, 16, 16), n_labeled=2, n_val=0, seed=3)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--iterations", "50", "--method",
            "supervised", "--patch", "16", "16", "16", "--base-filters", "2", "--batch", "2", "0",
            "--no-dropout", "--val-every", "0", *FAST, "--quiet"]
    token = CancelToken()
    args = build_parser().parse_args(argv)
    code = run_command("train", functools.partial(train_cmd.run, progress=_cancel_at("train", [token], 2)),
                       args, token)
    assert code == EXIT_CANCELLED
    assert "stopped (resume with --resume) at iteration 2" in capsys.readouterr().out
    assert (tmp_path / "run" / "train_state.pt").is_file() and not _temporaries(tmp_path / "run")


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "napari_sscce.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _interrupt_when(proc: subprocess.Popen, marker: str, timeout: float = 60.0) -> tuple[str, str]:
    """Send SIGINT once ``marker`` appears on stdout; return (stdout, stderr) after the exit."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not any(marker in line for line in lines):
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {marker!r}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=timeout)
    reader.join(timeout=5)
    return "".join(lines), proc.stderr.read()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_cancels_a_real_finetune_process(tmp_path, tiny_model):
    ws = _workspace(tmp_path / "ws", cases=1)
    proc = _spawn(["finetune", "--workspace", str(ws.folder), "--model", str(tiny_model), "--iterations",
                   "100000", *FAST, "--distill", "0"])
    out, err = _interrupt_when(proc, "fine-tuning")  # the plan line, printed just before training starts
    assert proc.returncode == EXIT_CANCELLED, err[-2000:]
    assert "Traceback" not in err
    assert "sscce finetune: stopping at the next check" in err
    assert err.strip().splitlines()[-1].startswith("sscce finetune: cancelled")
    ws.reload()
    assert [v.version for v in ws.versions] == ["v0001"] and ws.current_version == "v0001"
    assert not _temporaries(ws.folder)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_cancels_a_real_predict_process(tmp_path, tiny_model):
    scan = _scan(tmp_path / "big.nii.gz", (48, 96, 96), seed=4)
    out = tmp_path / "out"
    proc = _spawn(["predict", "--model", str(tiny_model), str(scan), "--out", str(out), "--overlap", "0.9",
                   "--batch-size", "1", *FAST])
    _, err = _interrupt_when(proc, "normalising")
    assert proc.returncode == EXIT_CANCELLED, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "sscce predict: cancelled; nothing unfinished was kept"
    assert not out.exists() or not list(out.iterdir())


def test_a_second_ctrl_c_stops_at_once(capsys):
    with pytest.raises(KeyboardInterrupt), sigint_cancels("x") as token:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert token.cancelled  # the first only asks the run to stop
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert "sscce x: stopping at the next check" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back


# ------------------------------------------------------------------------------------------ errors
def test_a_missing_input_is_one_line_naming_the_file(tmp_path, tiny_model, capsys):
    missing = tmp_path / "nowhere.nii.gz"
    assert main(["predict", "--model", str(tiny_model), str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("sscce predict: ") and str(missing) in err


def test_a_corrupt_input_is_one_line_and_debug_shows_the_traceback(tmp_path, tiny_model, capsys):
    corrupt = tmp_path / "noise.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    argv = ["predict", "--model", str(tiny_model), str(corrupt), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("sscce predict: ") and str(corrupt) in err
    for debug in (["--debug", *argv], [*argv, "--debug"]):  # before or after the subcommand
        assert main(debug) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and str(corrupt) in err.strip().splitlines()[-1]


def test_a_corrupt_model_file_is_one_line(tmp_path, capsys):
    model = tmp_path / "broken.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    scan = _scan(tmp_path / "s.nii.gz")
    assert main(["predict", "--model", str(model), str(scan), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(model) in err


def test_an_unexpected_failure_is_one_line_exit_1(tmp_path, tiny_model, capsys, monkeypatch):
    import napari_sscce.inference.files as files

    def boom(*args, **kwargs):
        raise RuntimeError("something\ninside broke")

    monkeypatch.setattr(files, "predict_files", boom)
    scan = _scan(tmp_path / "s.nii.gz")
    assert main(["predict", "--model", str(tiny_model), str(scan), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "sscce predict: RuntimeError: something; inside broke (--debug shows the traceback)"
    ]


def test_os_errors_name_the_file():
    exc = PermissionError(13, "Permission denied", "/ws/manifest.lock")
    assert describe_error(exc) == "/ws/manifest.lock: Permission denied"
    assert describe_error(UserError("a.nii: bad\nreally")) == "a.nii: bad; really"
    assert describe_error(KeyError("no packaged model called 'x'")) == "no packaged model called 'x'"


# ------------------------------------------------------------------------------------------ model names
def test_finetune_and_train_take_a_packaged_models_name(tmp_path, packaged, capsys):
    ws = _workspace(tmp_path / "ws", cases=1)
    argv = ["finetune", "--workspace", str(ws.folder), "--model", "hippocampus-cce", "--iterations", "2",
            *FAST, "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    ws.reload()
    assert [v.version for v in ws.versions] == ["v0001", "v0002"]
    assert ws.version_path("v0001").read_bytes() == packaged.read_bytes()  # it started from the packaged one
    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--init", "hippocampus-cce",
                                      "--out", str(tmp_path / "run")])
    assert train_cmd.config_from_args(args).init_checkpoint == str(packaged)
    capsys.readouterr()
    assert main(["finetune", "--workspace", str(ws.folder), "--model", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no packaged model called 'nope'" in err and "hippocampus-cce" in err
    with pytest.raises(UserError, match="no packaged model called 'nope'"):
        train_cmd.config_from_args(argparse.Namespace(**{**vars(args), "init": "nope"}))


# ------------------------------------------------------------------------------------------ progress
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_adapter_prints_step_rate_and_time_left():
    clock, err, out = _Clock(), io.StringIO(), io.StringIO()
    printer = ProgressPrinter("it", stream=err, out=out, interval=0, clock=clock)
    printer(ProgressEvent("train", 0, 10, "precision fp32 on cpu (requested)"))
    for step in range(1, 6):
        printer(ProgressEvent("train", step, 10, f"loss {1 / step:.4f}", {"loss": 1 / step}))
        clock.now += 2.0
    printer(ProgressEvent("validate", 5, 10, "val Dice 0.5000", {"val_dice": 0.5}))
    assert out.getvalue() == "precision fp32 on cpu (requested)\n"
    last = err.getvalue().strip().splitlines()[-1]
    # steps 1..5 over 8 s: 0.5 it/s, 5 steps left = 10 s
    assert last == "train: step 5 of 10, 0.5 it/s, 10s left, loss 0.2000"
    printer(ProgressEvent("inference", 3, 12, "[1/2] case01: window 3/12 on cpu"))
    assert err.getvalue().strip().splitlines()[-1].startswith("[1/2] case01: step 3 of 12")


def test_the_progress_adapter_is_quiet_and_sparse_off_a_terminal():
    clock, err, out = _Clock(), io.StringIO(), io.StringIO()
    printer = ProgressPrinter("it", stream=err, out=out, interval=10, clock=clock)
    for step in range(1, 21):
        printer(ProgressEvent("train", step, 20, "", {"loss": 0.1}))
        clock.now += 1.0
    lines = err.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["train: step 1 of 20", "train: step 11 of 20",
                                                      "train: step 20 of 20"]
    quiet_err = io.StringIO()
    quiet = ProgressPrinter("it", quiet=True, stream=quiet_err, out=out, interval=0, clock=clock)
    quiet(ProgressEvent("train", 1, 2, "", {"loss": 0.1}))
    quiet(ProgressEvent("train", 0, 2, "warning: something"))
    assert quiet_err.getvalue() == "" and out.getvalue().endswith("warning: something\n")


def test_train_augment_option_switches_the_config_fields(tmp_path):
    def config(*extra):
        args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                          *extra])
        return train_cmd.config_from_args(args)

    default = config()
    assert not (default.augment_spatial or default.augment_intensity or default.augment_noise)
    chosen = config("--augment", "spatial", "intensity")
    assert (chosen.augment_spatial, chosen.augment_intensity, chosen.augment_noise) == (True, True, False)
    off = config("--augment", "none")
    assert not (off.augment_spatial or off.augment_intensity or off.augment_noise)
    with pytest.raises(UserError, match="none cannot be combined"):
        config("--augment", "none", "noise")
    with pytest.raises(SystemExit):
        config("--augment", "elastic")  # not a kind the training knows
