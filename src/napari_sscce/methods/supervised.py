"""Supervised baseline: the same two networks as CCE, trained on confirmed labeled voxels only.

Each network gets ``0.5 CE + 0.5 Dice`` on the labeled rows (voxels with ``mask == 1``); no unlabeled
rows are drawn (``uses_unlabeled = False``). Prediction is the mean of the two softmax outputs, as for
CCE, so the comparison isolates the effect of the unlabeled data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from napari_sscce.methods.base import Batch, TrainingMethod
from napari_sscce.methods.losses import supervised_loss
from napari_sscce.methods.registry import register_method


@register_method
class SupervisedMethod(TrainingMethod):
    """Supervised-only training of the dual networks."""

    name: ClassVar[str] = "supervised"
    label: ClassVar[str] = "Supervised (labeled voxels only)"
    default_networks: ClassVar[tuple[str, str]] = ("vnet", "resnet_vnet")
    model_kind: ClassVar[str] = "dual"
    uses_unlabeled: ClassVar[bool] = False
    default_options: ClassVar[dict[str, Any]] = {"sup_ce_weight": 0.5, "sup_dice_weight": 0.5}

    def losses(self, model, batch: Batch, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum of both networks' supervised losses on the labeled rows."""
        lb = batch.labeled_bs
        image, label, mask = batch.image[:lb], batch.label[:lb], batch.mask[:lb]
        o = self.options
        ce_w, dice_w = o["sup_ce_weight"], o["sup_dice_weight"]
        terms = {
            f"sup_{key}": supervised_loss(net(image)[0], label, mask, ce_w, dice_w)
            for key, net in (("a", model.net_a), ("b", model.net_b))
        }
        total = terms["sup_a"] + terms["sup_b"]
        return total, {k: float(v.detach()) for k, v in terms.items()}
