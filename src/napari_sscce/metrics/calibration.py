"""How well an uncertainty map finds the errors, and how well the probabilities are calibrated.

- :func:`auroc`: area under the ROC curve of a score for a binary target (rank statistic, ties averaged),
  e.g. how well the entropy map separates wrong voxels from right ones (1 = perfectly, 0.5 = no better
  than chance);
- :func:`expected_calibration_error`: the standard binned ECE of the confidence (max class probability)
  against correctness (Guo et al. 2017, 15 equal-width bins);
- :func:`error_band`: the voxels "near the object" (predicted or true foreground, dilated), where a
  segmentation's errors live and where a person looks;
- :func:`temperature_scale` / :func:`fit_temperature`: one temperature for a model's probabilities,
  fitted by minimising the negative log-likelihood on labeled cases;
- :func:`uncertainty_report`: all of these for a set of maps of one case.

No scikit-learn: the AUROC is the Mann-Whitney U statistic computed from average ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize

from napari_sscce.uncertainty import dilated_foreground

__all__ = [
    "ECE_BINS",
    "auroc",
    "average_ranks",
    "error_band",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_bins",
    "temperature_scale",
    "uncertainty_report",
]

#: number of equal-width confidence bins of the expected calibration error (the usual choice)
ECE_BINS = 15
EPS = 1e-8


# ----------------------------------------------------------------------------------------------- AUROC
def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (flattened) with tied values sharing the mean of their ranks.

    Parameters
    ----------
    values : ndarray
        Any shape; flattened.

    Returns
    -------
    ndarray
        float64 ranks, same length as ``values.ravel()``.
    """
    v = np.asarray(values).ravel()
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # start index of every run of equal values in the sorted order
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], v.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(scores: np.ndarray, positives: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve of ``scores`` for the binary target ``positives``.

    Equal to the probability that a random positive scores higher than a random negative, ties counting
    one half (Mann-Whitney ``U / (n_pos n_neg)``, from average ranks).

    Parameters
    ----------
    scores : ndarray
        Higher = more likely positive (e.g. an uncertainty map).
    positives : ndarray
        Boolean target of the same shape (e.g. wrong voxels).
    mask : ndarray, optional
        Boolean; only these voxels count.

    Returns
    -------
    float
        In [0, 1]; NaN when there are no positives or no negatives.
    """
    s = np.asarray(scores)
    y = np.asarray(positives, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} differs from target shape {y.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        s, y = s[m], y[m]
    s, y = s.ravel(), y.ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(average_ranks(s)[y].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * float(n_neg))


# ----------------------------------------------------------------------------------------------- calibration
def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin count, mean confidence and accuracy of equal-width bins ``(i/n, (i+1)/n]`` on [0, 1].

    A confidence of exactly 0 goes into the first bin.

    Returns
    -------
    counts, mean_confidence, accuracy : ndarray
        Length ``n_bins``; empty bins have count 0 and mean/accuracy 0.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=np.float64).ravel()
    if c.shape != ok.shape:
        raise ValueError(f"confidence ({c.size} values) and correct ({ok.size} values) differ in size")
    idx = np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_conf = np.bincount(idx, weights=c, minlength=n_bins)
    sum_ok = np.bincount(idx, weights=ok, minlength=n_bins)
    safe = np.maximum(counts, 1.0)
    return counts, sum_conf / safe, sum_ok / safe


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS, mask: np.ndarray | None = None
) -> float:
    """Expected calibration error ``sum_b (|B_b| / N) |accuracy(B_b) - confidence(B_b)|``.

    Parameters
    ----------
    confidence : ndarray
        The probability of the predicted class (max over classes), in [0, 1].
    correct : ndarray
        Boolean, same shape: the prediction is right.
    n_bins : int
        Equal-width bins on [0, 1] (15, as Guo et al. 2017).
    mask : ndarray, optional
        Only these voxels count.

    Returns
    -------
    float
        In [0, 1] (0 = perfectly calibrated); NaN for no voxels.
    """
    c = np.asarray(confidence)
    ok = np.asarray(correct, dtype=bool)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        c, ok = c[m], ok[m]
    if c.size == 0:
        return float("nan")
    counts, conf, acc = reliability_bins(c, ok, n_bins)
    return float(np.sum(counts / counts.sum() * np.abs(acc - conf)))


def negative_log_likelihood(
    prob: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, axis: int = 0
) -> float:
    """Mean ``-log p[true class]`` over the voxels (``mask`` restricts them).

    Parameters
    ----------
    prob : ndarray
        ``[C, Z, Y, X]`` probabilities (class axis ``axis``).
    labels : ndarray
        True labels ``[Z, Y, X]``.
    mask : ndarray, optional
        Boolean; only these voxels count.
    axis : int
        Class axis of ``prob``.
    """
    p = np.moveaxis(np.asarray(prob), axis, 0)
    lab = np.asarray(labels).astype(np.int64)
    picked = np.take_along_axis(p, lab[None], axis=0)[0]
    if mask is not None:
        picked = picked[np.asarray(mask, dtype=bool)]
    return float(-np.log(np.maximum(picked, EPS)).mean(dtype=np.float64))


def temperature_scale(prob: np.ndarray, temperature: float, axis: int = 0) -> np.ndarray:
    """Probabilities with temperature ``T``: ``softmax(log p / T)``, i.e. ``p ** (1/T)`` renormalised.

    For a network's own softmax this is exactly temperature scaling of its logits
    (``log softmax(z) = z - const``). For the mean of two networks it scales the log of the mean: the
    argmax (the segmentation) never changes, only how sure the probabilities are. ``T > 1`` softens,
    ``T < 1`` sharpens, ``T = 1`` returns the input (as float32).

    Parameters
    ----------
    prob : ndarray
        Probabilities summing to 1 along ``axis``.
    temperature : float
        ``T > 0``.
    axis : int
        Class axis.

    Returns
    -------
    ndarray
        float32, same shape.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p = np.asarray(prob, dtype=np.float32)
    if temperature == 1.0:
        return p.copy()
    logp = np.log(np.maximum(p, np.float32(EPS)))
    logp *= np.float32(1.0 / temperature)
    logp -= logp.max(axis=axis, keepdims=True)
    np.exp(logp, out=logp)
    logp /= logp.sum(axis=axis, keepdims=True)
    return logp


def fit_temperature(
    probs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    bounds: tuple[float, float] = (0.05, 20.0),
    axis: int = 0,
) -> float:
    """The temperature that minimises the negative log-likelihood of labeled cases.

    One scalar ``T`` for all cases (Guo et al. 2017), searched on ``log T`` within ``bounds``
    (bounded Brent search; the NLL is smooth and unimodal in ``T`` for practical data).

    Parameters
    ----------
    probs : sequence of ndarray
        Each case's ``[C, Z, Y, X]`` probabilities.
    labels : sequence of ndarray
        Each case's true labels ``[Z, Y, X]``.
    masks : sequence of ndarray or None, optional
        Voxels that count per case (e.g. :func:`error_band`); None = all.
    bounds : tuple of float
        Search interval for ``T``.
    axis : int
        Class axis.

    Returns
    -------
    float
        The fitted temperature.
    """
    if len(probs) != len(labels) or not probs:
        raise ValueError("fit_temperature needs as many label maps as probability maps, at least one")
    masks = list(masks) if masks is not None else [None] * len(probs)
    # gather the voxels once: class probabilities [C, N] and the true class index [N]
    columns, truth = [], []
    for p, lab, m in zip(probs, labels, masks, strict=True):
        p2 = np.moveaxis(np.asarray(p, dtype=np.float32), axis, 0).reshape(np.shape(p)[axis], -1)
        lab2 = np.asarray(lab).reshape(-1).astype(np.int64)
        if m is not None:
            keep = np.asarray(m, dtype=bool).reshape(-1)
            p2, lab2 = p2[:, keep], lab2[keep]
        columns.append(p2)
        truth.append(lab2)
    logp = np.log(np.maximum(np.concatenate(columns, axis=1), EPS)).astype(np.float64)
    y = np.concatenate(truth)
    true_logp = logp[y, np.arange(y.size)]

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        zmax = z.max(axis=0)
        lse = zmax + np.log(np.exp(z - zmax).sum(axis=0))
        return float((lse - true_logp / math.exp(log_t)).mean())

    lo, hi = (math.log(b) for b in bounds)
    result = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


# ----------------------------------------------------------------------------------------------- report
def error_band(pred: np.ndarray, gt: np.ndarray | None = None, margin: int = 3) -> np.ndarray:
    """Voxels near the object: predicted or true foreground dilated by ``margin`` voxels (26-connected).

    With ``margin = 0`` the band is the union of both foregrounds. All False when neither has foreground.
    """
    fg = np.asarray(pred) > 0
    if gt is not None:
        fg = fg | (np.asarray(gt) > 0)
    return dilated_foreground(fg.astype(np.uint8), margin)


def uncertainty_report(
    maps: Mapping[str, np.ndarray],
    prob: np.ndarray,
    gt: np.ndarray,
    margin: int = 3,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """AUROC of every map for the wrong voxels and the ECE of ``prob``, near the object and overall.

    Parameters
    ----------
    maps : mapping of str to ndarray
        Uncertainty maps ``[Z, Y, X]`` (higher = more likely wrong).
    prob : ndarray
        ``[C, Z, Y, X]`` probabilities whose argmax is the segmentation being judged.
    gt : ndarray
        True labels.
    margin : int
        Width of :func:`error_band`.
    n_bins : int
        ECE bins.

    Returns
    -------
    dict
        ``{"auroc": {name: {"band", "volume"}}, "ece": {"band", "volume"}, "wrong_voxels",
        "wrong_in_band", "band_voxels", "voxels"}``.
    """
    p = np.asarray(prob)
    pred = p.argmax(0)
    wrong = pred != np.asarray(gt)
    band = error_band(pred, gt, margin)
    conf = p.max(0)
    return {
        "auroc": {
            name: {"band": auroc(m, wrong, band), "volume": auroc(m, wrong)} for name, m in maps.items()
        },
        "ece": {
            "band": expected_calibration_error(conf, ~wrong, n_bins, band),
            "volume": expected_calibration_error(conf, ~wrong, n_bins),
        },
        "wrong_voxels": int(wrong.sum()),
        "wrong_in_band": int((wrong & band).sum()),
        "band_voxels": int(band.sum()),
        "voxels": int(wrong.size),
    }
