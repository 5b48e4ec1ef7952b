"""The correction loop: fine-tune a model on a person's corrections without forgetting; version the result.

One module per concern; :func:`run_finetune` (:mod:`~napari_sscce.loop.finetune`) is the whole step the
Correct & fine-tune widget, ``sscce finetune`` and ``benchmarks/finetune_gain.py`` call:

1. **Compatibility**: only a method that can continue the model's architecture may fine-tune it
   (:func:`~napari_sscce.methods.registry.check_compatible`; ``sscce train --init`` uses it too).
2. **Inheritance**: patch size, intensity normalisation, classes and (in the loop) the flip restrictions
   come from the model (:mod:`~napari_sscce.loop.config`).
3. **Keep what the model knew**: when the starting model records where its labeled set is (a model trained
   by this project stores its data folder and split in its metadata; a workspace version stores the set it
   replayed) that set is replayed beside the workspace's cases (:mod:`~napari_sscce.loop.replay`); a share
   :data:`REPLAY_SHARE` of the labeled draws come from it. Otherwise the fine-tune runs at a tenth of the
   learning rate (:data:`NO_REPLAY_LR`) and *distils* the starting model: it segments every workspace
   image once, and trains on its labels outside the confirmed voxels with weight :data:`DISTILL_WEIGHT` (a
   weighted training mask; confirmed voxels weigh 1) and on the unlabeled images labeled by it
   (:data:`DISTILL_SHARE` of the labeled draws), see :mod:`~napari_sscce.loop.data_view`. A pull toward the
   starting weights (L2-SP, method option ``l2sp_weight``) is available (``l2sp``) but off by default
   (:data:`DEFAULT_L2SP`: it measured worse).
4. **Never adopt a worse model silently**: a fraction :data:`HOLDOUT_FRACTION` of the confirmed slices of
   every corrected case is held aside (not trained on); the starting and the fine-tuned model are scored on
   them (:mod:`~napari_sscce.loop.held_aside`); a fine-tune that scores worse is kept as a workspace
   version but not made current, and the result's message gives both figures.
5. **Versioning** (:mod:`~napari_sscce.loop.adoption`; the workspace owns versions and their lookup): the
   starting model becomes a workspace version when it is not one yet; the new model is the next version,
   with its method, iterations, run folder, scores and replayed set in its record.

With ``cold_start`` it trains a first model from scratch on the workspace (:data:`COLD_START`).
:func:`~napari_sscce.loop.corrections.merge_corrections` keeps every confirmed voxel of a person's
corrections in a new segmentation. Nothing here imports Qt; ``training/`` trains a model from a config
and knows nothing of workspaces.
"""

from __future__ import annotations

from napari_sscce.loop.adoption import MIN_EFFECTIVE_SHARE, FinetuneResult, trained_enough
from napari_sscce.loop.config import (
    COLD_START,
    FINETUNE_OVERRIDES,
    build_finetune_config,
    cold_start_config,
    cold_start_patch,
    describe_cold_start,
)
from napari_sscce.loop.corrections import merge_corrections, merge_prediction
from napari_sscce.loop.data_view import DISTILL_SHARE, DISTILL_WEIGHT, DataView, Distillation, build_view
from napari_sscce.loop.finetune import (
    DEFAULT_L2SP,
    FINETUNE_METHOD,
    NO_REPLAY_LR,
    finetune_method,
    run_finetune,
)
from napari_sscce.loop.held_aside import (
    HOLDOUT_FRACTION,
    HeldAside,
    annotation_planes,
    held_aside_dice,
    score_model,
    split_held_aside,
)
from napari_sscce.loop.replay import REPLAY_SHARE, ReplaySource, find_replay_source, replay_copies

__all__ = [
    "COLD_START",
    "DEFAULT_L2SP",
    "DISTILL_SHARE",
    "DISTILL_WEIGHT",
    "FINETUNE_METHOD",
    "FINETUNE_OVERRIDES",
    "HOLDOUT_FRACTION",
    "MIN_EFFECTIVE_SHARE",
    "NO_REPLAY_LR",
    "REPLAY_SHARE",
    "DataView",
    "Distillation",
    "FinetuneResult",
    "HeldAside",
    "ReplaySource",
    "annotation_planes",
    "build_finetune_config",
    "build_view",
    "cold_start_config",
    "cold_start_patch",
    "describe_cold_start",
    "find_replay_source",
    "finetune_method",
    "held_aside_dice",
    "merge_corrections",
    "merge_prediction",
    "replay_copies",
    "run_finetune",
    "score_model",
    "split_held_aside",
    "trained_enough",
]
