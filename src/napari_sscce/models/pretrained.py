"""Models shipped with the package: a registry, their model cards, a check that a scan suits a model.

Packaged models are ordinary model files (:mod:`napari_sscce.models.checkpoint`) in
``napari_sscce/data/models/<name>.safetensors``, stored in float16 (loading gives float32 networks). The
registry lists the files that are there, nothing else: a model whose file is absent is not offered. Tests and
users can point it at another folder with ``$NAPARI_SSCCE_MODELS_DIR``.

Each file carries a **model card** in its metadata (key ``"model_card"``): title, data, licence and credit of
the training data, split, recipe (the exact ``sscce train`` command), validation figures (Dice per class and
mean, HD95), training time, machine, date, and statistics of the training scans
(:func:`training_statistics`) that :func:`domain_warnings` compares a new scan against.

Warning rule (:func:`domain_warnings`), applied before segmenting; each rule that fires gives one line:

- **spacing**: inference resamples to the model's spacing, so a scan of the model's own kind at a finer
  resolution (a full-resolution LA MRI at 0.625 mm for a model trained at 1.9 mm) is not warned about. The
  rule fires when the scan is coarser than the coarsest training spacing by more than :data:`SPACING_RATIO`
  (1.5) on an axis (blown up, blurrier than anything the model saw), or finer than the finest by more than
  :data:`FINER_RATIO` (4).
- **intensity scale**: the scan's 99.5th percentile lies outside the training scans' range of 99.5th
  percentiles widened by a factor :data:`INTENSITY_RATIO` (4) on each side.
- **negative intensities**: more than :data:`NEGATIVE_FRACTION` (1 %) of the scan's voxels are negative while
  no training scan had more than that (e.g. a CT in Hounsfield units, or an already normalised scan, given to
  an MRI model).
- **field of view**: the scan's physical extent exceeds :data:`EXTENT_RATIO` (2) times the largest training
  extent on some axis (e.g. a whole-brain MRI given to a model trained on crops around the hippocampus).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: environment variable that replaces the folder of packaged models (tests, custom installs)
MODELS_DIR_ENV = "NAPARI_SSCCE_MODELS_DIR"
#: spacing rule: warn when the scan's spacing exceeds this times the coarsest training spacing on an axis
SPACING_RATIO = 1.5
#: spacing rule: warn when the scan's spacing is finer than the finest training spacing by more than this
FINER_RATIO = 4.0
#: intensity rule: warn when the scan's 99.5th percentile is outside [min / r, max * r] of the training scans'
INTENSITY_RATIO = 4.0
#: negative-intensity rule: fraction of negative voxels that counts as "has negative intensities"
NEGATIVE_FRACTION = 0.01
#: field-of-view rule: warn when the scan's extent exceeds this times the largest training extent on an axis
EXTENT_RATIO = 2.0
#: titles shown in the Segment widget for the models this project trains (others show their card's title)
TITLES = {
    "hippocampus-cce": "Hippocampus MRI — CCE",
    "left-atrium-cce": "Left atrium MRI — CCE",
}


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """A model file shipped with the package.

    Attributes
    ----------
    name : str
        Registry name, the file name without ``.safetensors`` (e.g. ``"hippocampus-cce"``).
    path : pathlib.Path
        The model file.
    """

    name: str
    path: Path

    @property
    def metadata(self) -> dict[str, Any]:
        """The checkpoint metadata (header only; cheap)."""
        from napari_sscce.models.checkpoint import read_checkpoint_metadata

        return read_checkpoint_metadata(self.path)

    @property
    def card(self) -> dict[str, Any]:
        """The model card (empty when the file has none)."""
        card = self.metadata.get("model_card")
        return dict(card) if isinstance(card, Mapping) else {}

    @property
    def title(self) -> str:
        """Human title, e.g. ``"Hippocampus MRI — CCE"``."""
        return TITLES.get(self.name) or str(self.card.get("title") or self.name)


def models_dir() -> Path:
    """The folder of packaged models: ``$NAPARI_SSCCE_MODELS_DIR`` or ``napari_sscce/data/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    return Path(str(resources.files("napari_sscce") / "data" / "models"))


def list_models() -> list[PretrainedModel]:
    """The packaged models whose files are present, known titles first, then by name."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    found = [PretrainedModel(p.name.removesuffix(".safetensors"), p) for p in folder.glob("*.safetensors")]
    order = list(TITLES)
    return sorted(found, key=lambda m: (order.index(m.name) if m.name in order else len(order), m.name))


def get_model(name: str) -> PretrainedModel:
    """The packaged model called ``name``.

    Raises
    ------
    KeyError
        When there is no such model; the message lists those there are.
    """
    for model in list_models():
        if model.name == name:
            return model
    names = ", ".join(m.name for m in list_models()) or f"none in {models_dir()}"
    raise KeyError(f"no packaged model called {name!r} (packaged models: {names})")


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A model file from a path or a packaged model's name (an existing file wins).

    Raises
    ------
    FileNotFoundError
        When ``name_or_path`` is neither an existing file nor a packaged model's name.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    try:
        return get_model(str(name_or_path)).path
    except KeyError as exc:
        raise FileNotFoundError(f"{name_or_path}: no such model file, and {exc.args[0]}") from None


# ------------------------------------------------------------------------------------------ statistics
def _percentiles(array: np.ndarray) -> tuple[float, float, float]:
    """0.5th and 99.5th percentiles and the fraction of negative voxels of a scan."""
    values = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi), float(np.mean(values < 0))


def _range(values: Iterable[float]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=float)
    return {"min": float(arr.min()), "median": float(np.median(arr)), "max": float(arr.max())}


def training_statistics(volumes: Iterable[Any]) -> dict[str, Any]:
    """Summarise the scans a model was trained on, for :func:`domain_warnings`.

    Parameters
    ----------
    volumes : iterable of Volume
        The training scans (images, not labels).

    Returns
    -------
    dict
        ``{"cases": n, "spacing": {"min": [z, y, x], "median": [...], "max": [...]}, "extent_mm": {... same},
        "p99_5": {"min", "median", "max"}, "p0_5": {...}, "negative_fraction": {...}}``.

    Raises
    ------
    ValueError
        When ``volumes`` is empty.
    """
    spacings, extents, lows, highs, negatives = [], [], [], [], []
    for volume in volumes:
        spacing = np.asarray(volume.spacing, dtype=float)
        spacings.append(spacing)
        extents.append(spacing * np.asarray(volume.shape, dtype=float))
        lo, hi, neg = _percentiles(volume.array)
        lows.append(lo)
        highs.append(hi)
        negatives.append(neg)
    if not spacings:
        raise ValueError("training_statistics needs at least one scan")

    def per_axis(rows: list[np.ndarray]) -> dict[str, list[float]]:
        arr = np.stack(rows)
        return {k: [float(v) for v in f(arr, axis=0)] for k, f in
                (("min", np.min), ("median", np.median), ("max", np.max))}

    return {
        "cases": len(spacings),
        "spacing": per_axis(spacings),
        "extent_mm": per_axis(extents),
        "p0_5": _range(lows),
        "p99_5": _range(highs),
        "negative_fraction": _range(negatives),
    }


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)


def domain_warnings(volume: Any, metadata: Mapping[str, Any]) -> list[str]:
    """Say how a scan differs from the data a model was trained on (rules in the module docstring).

    Parameters
    ----------
    volume : Volume
        The scan to segment.
    metadata : mapping
        The model file's metadata: ``spacing`` (training spacing) and ``model_card["training_data"]``
        (from :func:`training_statistics`); models without them get only the spacing rule, or nothing.

    Returns
    -------
    list of str
        One sentence per rule that fires; empty when the scan looks like the training data.
    """
    warnings: list[str] = []
    card = metadata.get("model_card") if isinstance(metadata.get("model_card"), Mapping) else {}
    stats = card.get("training_data") if isinstance(card.get("training_data"), Mapping) else {}
    train_spacing = metadata.get("spacing") or (stats.get("spacing") or {}).get("median")
    spacing = np.asarray(volume.spacing, dtype=float)
    if train_spacing is not None and len(train_spacing) == 3:
        # inference resamples to the training spacing: a finer scan only loses detail the model never saw,
        # a coarser one is blown up (blurrier than any training scan), so the two sides have their own rule
        coarsest = np.asarray((stats.get("spacing") or {}).get("max") or train_spacing, dtype=float)
        finest = np.asarray((stats.get("spacing") or {}).get("min") or train_spacing, dtype=float)
        if np.any(spacing > SPACING_RATIO * coarsest):
            warnings.append(
                f"spacing {_fmt(spacing)} mm is more than {SPACING_RATIO:g}x coarser than the model's "
                f"training scans' ({_fmt(coarsest)} mm at most): the result will be blurrier; a finer scan "
                "works better"
            )
        elif np.any(spacing * FINER_RATIO < finest):
            warnings.append(
                f"spacing {_fmt(spacing)} mm is more than {FINER_RATIO:g}x finer than the model's training "
                f"scans' ({_fmt(finest)} mm): small structures may be lost when the scan is resampled"
            )
    if not stats:
        return warnings
    _, hi, neg = _percentiles(volume.array)
    p99 = stats.get("p99_5") or {}
    if p99 and not (p99["min"] / INTENSITY_RATIO <= hi <= p99["max"] * INTENSITY_RATIO):
        warnings.append(
            f"intensities: 99.5th percentile {hi:.4g}, the training scans' were {p99['min']:.4g} to "
            f"{p99['max']:.4g} (another modality or contrast?)"
        )
    train_neg = (stats.get("negative_fraction") or {}).get("max")
    if train_neg is not None and neg > NEGATIVE_FRACTION >= train_neg:
        warnings.append(
            f"intensities: {100 * neg:.0f} % of the voxels are negative, none of the training scans had any "
            "(a CT, or an already normalised scan?)"
        )
    extent_max = (stats.get("extent_mm") or {}).get("max")
    if extent_max is not None:
        extent = spacing * np.asarray(volume.shape, dtype=float)
        if np.any(extent > EXTENT_RATIO * np.asarray(extent_max, dtype=float)):
            warnings.append(
                f"field of view {_fmt(extent)} mm is much larger than the training scans' (at most "
                f"{_fmt(extent_max)} mm): crop around the structure first"
            )
    return warnings


# ------------------------------------------------------------------------------------------ model cards
def card_summary(metadata: Mapping[str, Any]) -> str:
    """One or two lines about a packaged model's card (empty for other models): data and validation."""
    card = metadata.get("model_card")
    if not isinstance(card, Mapping):
        return ""
    lines = [f"trained on: {card['data']}"] if card.get("data") else []
    val = card.get("validation") or {}
    if val.get("dice_mean") is not None:
        lines.append(
            f"held-out Dice {float(val['dice_mean']):.3f} on {val.get('cases', '?')} cases"
            + (f", HD95 {float(val['hd95_mm']):.2f} mm" if val.get("hd95_mm") is not None else "")
        )
    return "\n".join(lines)


def recipe_command(args: Sequence[str]) -> str:
    """``sscce train ...`` as one shell-quoted line."""
    return " ".join(["sscce", "train", *(shlex.quote(str(a)) for a in args)])


def format_card(model: PretrainedModel) -> str:
    """A few lines for ``sscce models``: name, file, data, validation figures, recipe."""
    card = model.card
    lines = [f"{model.name}  ({model.title})", f"  file: {model.path}"]
    if card.get("data"):
        lines.append(f"  data: {card['data']}")
    if card.get("split"):
        lines.append(f"  split: {card['split']}")
    val = card.get("validation") or {}
    if val:
        per_class = ", ".join(f"{k} {float(v):.3f}" for k, v in (val.get("dice_per_class") or {}).items())
        hd = val.get("hd95_mm")
        mean = float(val.get("dice_mean", "nan"))
        lines.append(
            f"  validation ({val.get('cases', '?')} cases): mean Dice {mean:.3f}"
            + (f" ({per_class})" if per_class else "")
            + (f", HD95 {float(hd):.2f} mm" if hd is not None else "")
        )
    for key in ("training_time", "machine", "date", "license"):
        if card.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {card[key]}")
    if card.get("recipe"):
        lines.append(f"  recipe: {card['recipe']}")
    return "\n".join(lines)


def evaluate_on_cases(
    checkpoint: Any, cases: Iterable[tuple[str, Any, Any]], config: Any = None
) -> dict[str, Any]:
    """Validation figures of a model on labelled scans, as a model card records them.

    Parameters
    ----------
    checkpoint : Checkpoint or path
        The model (``predict_volume`` accepts either).
    cases : iterable of (name, image Volume, label Volume)
        Scans the model never trained on.
    config : InferenceConfig, optional
        Inference settings (default: the defaults users get).

    Returns
    -------
    dict
        ``{"cases": n, "case_names": [...], "dice_mean", "dice_per_class": {class name: Dice},
        "hd95_mm", "hd95_mm_per_class": {...}, "per_case": {name: mean Dice}}``: means over cases (Dice as a
        fraction; HD95 in mm).

    Raises
    ------
    ValueError
        When there are no cases or a figure is not finite.
    """
    from napari_sscce.inference.config import InferenceConfig
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.metrics.evaluate import evaluate_case
    from napari_sscce.models.checkpoint import Checkpoint, load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    config = config or InferenceConfig()
    names = ckpt.class_names
    dice: dict[str, list[float]] = {n: [] for n in names[1:]}
    hd95: dict[str, list[float]] = {n: [] for n in names[1:]}
    per_case: dict[str, float] = {}
    for case, image, label in cases:
        pred = predict_volume(ckpt, image, config).labels
        result = evaluate_case(pred, np.asarray(label.array), ckpt.num_classes, spacing=image.spacing)
        for c, metrics in result["classes"].items():
            dice[names[int(c)]].append(float(metrics["dice"]))
            hd95[names[int(c)]].append(float(metrics["hd95_mm"]))
        per_case[str(case)] = float(result["mean"]["dice"])
    if not per_case:
        raise ValueError("evaluate_on_cases needs at least one labelled case")
    out = {
        "cases": len(per_case),
        "case_names": list(per_case),
        "dice_per_class": {k: float(np.mean(v)) for k, v in dice.items()},
        "hd95_mm_per_class": {k: float(np.mean(v)) for k, v in hd95.items()},
        "per_case": per_case,
    }
    out["dice_mean"] = float(np.mean(list(out["dice_per_class"].values())))
    out["hd95_mm"] = float(np.mean(list(out["hd95_mm_per_class"].values())))
    bad = [k for k in ("dice_mean", "hd95_mm") if not np.isfinite(out[k])]
    if bad:
        raise ValueError(f"validation figures are not finite: {', '.join(bad)} ({out})")
    return out


def write_packaged_model(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    card: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
) -> Path:
    """Store a trained model as a packaged one: float16 weights and ``card`` in its metadata.

    Parameters
    ----------
    source : path-like
        A model file written by ``sscce train``.
    destination : path-like
        ``<models dir>/<name>.safetensors`` (written atomically).
    card : mapping
        The model card (see the module docstring).
    class_names : sequence of str, optional
        Names of the classes (background first) replacing the run's (e.g. ``"class 1"`` -> ``"anterior"``).

    Returns
    -------
    pathlib.Path
        ``destination``.
    """
    import torch

    from napari_sscce.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source)
    metadata = {**ckpt.metadata, "model_card": dict(card)}
    if class_names is not None:
        metadata["class_names"] = [str(n) for n in class_names]
    for key in ("arch", "num_classes", "in_channels", "versions", "storage_dtype"):
        metadata.pop(key, None)  # save_checkpoint writes these afresh
    return save_checkpoint(destination, ckpt.model, metadata, dtype=torch.float16)
