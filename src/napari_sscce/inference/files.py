"""Predict image files and write the label map and both uncertainty maps next to each other."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_sscce.atomic import atomic_write_json
from napari_sscce.inference.config import InferenceConfig
from napari_sscce.inference.predict import Prediction, load_model, predict_volume
from napari_sscce.io.channels import CHANNEL_FILE, channel_files, read_multichannel
from napari_sscce.io.readers import read_volume
from napari_sscce.io.volume import file_stem
from napari_sscce.io.writers import write_volume
from napari_sscce.progress import CancelToken, ProgressCallback, ProgressEvent, check, report
from napari_sscce.uncertainty.export import rank_scans, ranking_report, write_regions

#: Output file suffixes, after the input's name.
SEG_SUFFIX = "_seg.nii.gz"
ENTROPY_SUFFIX = "_entropy.nii.gz"
KL_SUFFIX = "_kl.nii.gz"
#: with ``regions`` and several inputs: the scans ranked by their expected errors
SCANS_RANKED = "scans_ranked.json"


def output_paths(name: str, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The three files written for an input called ``name``: ``seg``, ``entropy``, ``kl``."""
    out = Path(out_dir)
    return {
        "seg": out / f"{name}{SEG_SUFFIX}",
        "entropy": out / f"{name}{ENTROPY_SUFFIX}",
        "kl": out / f"{name}{KL_SUFFIX}",
    }


def unique_output_names(names: Sequence[str], paths: Sequence[Path] | None = None) -> list[str]:
    """Output names for inputs called ``names``: the same names, except that a name already used by an
    earlier input gets ``-2``, ``-3``... (``a/scan.nii.gz`` and ``b/scan.nii.gz`` -> ``scan``, ``scan-2``),
    so that no input's outputs overwrite another's. A :class:`UserWarning` lists the renamed inputs."""
    used: set[str] = set()
    out: list[str] = []
    renamed: list[str] = []
    for i, name in enumerate(names):
        final, k = name, 1
        while final.casefold() in used:  # case-insensitive file systems would collide too
            k += 1
            final = f"{name}-{k}"
        used.add(final.casefold())
        out.append(final)
        if final != name:
            source = str(paths[i]) if paths is not None else name
            renamed.append(f"{source} -> {final}{SEG_SUFFIX}")
    if renamed:
        warnings.warn("inputs share a file name; their outputs are written under unique names so that none "
                      "overwrites another: " + "; ".join(renamed), UserWarning, stacklevel=2)
    return out


def write_prediction(
    prediction: Prediction, out_dir: str | os.PathLike, name: str | None = None
) -> list[Path]:
    """Write a prediction's labels, entropy and KL maps as NIfTI on the input volume's grid.

    Files: ``<name>_seg.nii.gz`` (integer labels), ``<name>_entropy.nii.gz`` and ``<name>_kl.nii.gz``
    (float32 in [0, 1]); with per-network probabilities also ``<name>_prob_a.nii.gz`` and
    ``<name>_prob_b.nii.gz``: each network's foreground probability ``1 - p(background)``. The affine is the
    input's (whatever its format: NIfTI, NRRD, LA h5 ...), so the files overlay the scan in any viewer.
    """
    volume = prediction.volume
    name = name or volume.name
    paths = output_paths(name, out_dir)
    written = [
        write_volume(volume.with_array(prediction.labels, is_label=True), paths["seg"]),
        write_volume(
            volume.with_array(prediction.entropy.astype(np.float32), is_label=False), paths["entropy"]
        ),
        write_volume(volume.with_array(prediction.kl.astype(np.float32), is_label=False), paths["kl"]),
    ]
    if prediction.per_network is not None:
        for tag, prob in zip("ab", prediction.per_network, strict=True):
            foreground = (1.0 - prob[0]).astype(np.float32)
            path = Path(out_dir) / f"{name}_prob_{tag}.nii.gz"
            written.append(write_volume(volume.with_array(foreground, is_label=False), path))
    return written


def scan_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The scans ``inputs`` name: nnU-Net per-channel files of one case (``case_0000``, ``case_0001``, ...)
    become one entry, the case prefix ``folder/case``, in the order of their first file."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        files = channel_files(path)
        if files is not None:
            path = files[0].parent / CHANNEL_FILE.match(files[0].name)["case"]  # type: ignore[index]
        if path not in out:
            out.append(path)
    return out


def predict_files(
    checkpoint_path: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: InferenceConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    *,
    channel: int | None = None,
    regions: bool = False,
) -> list[Path]:
    """Segment each input file and write its label, entropy and KL maps (see :func:`write_prediction`).

    Parameters
    ----------
    checkpoint_path : path-like
        Model file (loaded once).
    inputs : sequence of path-like
        Scans in any format :func:`napari_sscce.io.readers.read_volume` reads (an LA ``.h5`` gives its image).
    out_dir : path-like
        Output folder (created).
    config : InferenceConfig, optional
        Inference settings.
    progress, cancel
        Window-level events of each file (their message starts with ``[i/n] name:``) and a file-level event
        (stage ``"files"``) after each file; cancel is checked between files and between window batches.
    channel : int, optional
        The channel (or time point) to segment of 4D inputs (``read_volume(..., channel=)``). Without it,
        a 4D NIfTI or nnU-Net per-channel files (``case_0000.nii.gz``, ``case_0001.nii.gz``, ...; any of
        them or the case prefix ``folder/case``) are one multi-channel scan, segmented once as ``case``
        (:func:`napari_sscce.io.channels.read_multichannel`).
    regions : bool
        Also write the ranking beside the maps: ``<name>_regions.nii.gz`` and ``<name>_regions.json``
        (:mod:`napari_sscce.uncertainty.export`); with several inputs also ``scans_ranked.json``, the
        scans ordered by the errors they are expected to hold (which scan to correct next).

    Returns
    -------
    list of pathlib.Path
        Every written file.

    Raises
    ------
    FileNotFoundError
        When an input does not exist (checked for all inputs before any work).
    napari_sscce.models.checkpoint.CheckpointError, napari_sscce.io.errors.VolumeError
        For an unusable model file or input (the message names the file).
    """
    paths = scan_inputs(inputs) if channel is None else [Path(p) for p in inputs]
    missing = [str(p) for p in paths if not p.exists() and channel_files(p) is None]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {', '.join(missing)}")
    model, metadata = load_model(Path(checkpoint_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    reports: list[dict] = []
    names = unique_output_names([file_stem(p) for p in paths], paths)
    for index, path in enumerate(paths, start=1):
        check(cancel)
        if channel is None:  # several channels (4D NIfTI, case_0000, case_0001, ...) segmented together
            volume = read_multichannel(path, is_label=False)
        else:
            volume = read_volume(path, is_label=False, channel=channel)
        name = names[index - 1]
        if name != file_stem(path):
            report(progress, ProgressEvent("files", index - 1, len(paths),
                                           f"{path}: shares its name with another input; writing {name}_*"))
        prefix = f"[{index}/{len(paths)}] {volume.name}: "

        def relay(event: ProgressEvent, prefix: str = prefix) -> None:
            report(
                progress,
                ProgressEvent(event.stage, event.step, event.total, prefix + event.message, event.values),
            )

        prediction = predict_volume(model, volume, config, relay, cancel, metadata=metadata)
        written.extend(write_prediction(prediction, out, name))
        if regions:
            image, ranking = ranking_report(prediction.labels, prediction.entropy, prediction.kl,
                                            volume.spacing, source=str(path),
                                            num_classes=int(prediction.probabilities.shape[0]))
            written.extend(write_regions(volume, image, ranking, out, name))
            reports.append(ranking)
        report(
            progress,
            ProgressEvent(
                "files",
                index,
                len(paths),
                f"{volume.name} done in {prediction.seconds:.1f} s on {prediction.device}",
            ),
        )
    if regions and len(reports) > 1:
        atomic_write_json(out / SCANS_RANKED, {"scans": rank_scans(reports)})
        written.append(out / SCANS_RANKED)
    return written
