"""The interface between the training loop and a training method.

The loop (``napari_sscce.training.loop``) owns everything generic: autocast, backward, gradient
scaling, optimiser steps, learning-rate schedules, DDP wrapping, validation, checkpoints, resume and
cancel. A method owns what is specific to it: which two networks it builds, its per-term losses, the
extra per-case targets it needs (e.g. signed distance maps) and any post-step update (e.g. an EMA
teacher). Methods register in :mod:`napari_sscce.methods` (``METHODS``, ``get_method``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - import for type hints only
    from napari_sscce.models.dual import DualModel
    from napari_sscce.training.config import TrainConfig


@dataclass
class Batch:
    """One two-stream training batch.

    Attributes
    ----------
    image : torch.Tensor
        ``[B, Cin, Z, Y, X]`` float; rows ``[0, labeled_bs)`` are labeled, the rest unlabeled.
    label : torch.Tensor
        ``[B, Z, Y, X]`` long; zeros on unlabeled rows.
    mask : torch.Tensor
        ``[B, Z, Y, X]`` float; 1 where a label is confirmed (annotation mask), 0 on unlabeled rows.
        A fully labeled case has mask 1 everywhere. Voxels of a labeled row with mask 0 are unlabeled
        voxels: methods apply their unsupervised terms to every voxel with ``mask == 0`` (see
        :meth:`unlabeled_weight`), so partially annotated volumes feed both kinds of terms.
    labeled_bs : int
        Number of labeled rows at the start of the batch.
    extras : dict of str to torch.Tensor
        Per-method targets cropped with the patch, e.g. ``{"sdf": [B, C-1, Z, Y, X]}`` (zeros on
        unlabeled rows).
    """

    image: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    labeled_bs: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(self.image.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy on ``device``."""
        return Batch(
            image=self.image.to(device, non_blocking=non_blocking),
            label=self.label.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            labeled_bs=self.labeled_bs,
            extras={k: v.to(device, non_blocking=non_blocking) for k, v in self.extras.items()},
        )

    def unlabeled_weight(self) -> torch.Tensor:
        """``[B, Z, Y, X]`` float: 1 on voxels without a confirmed label (``1 - mask``).

        Unlabeled rows are all ones; on partially labeled rows the unannotated voxels count as
        unlabeled data for the unsupervised terms.
        """
        return 1.0 - self.mask


class TrainingMethod:
    """Base class of a semi-supervised training method.

    Subclasses set ``name``, ``default_networks`` and ``default_options`` and implement
    :meth:`losses`. ``self.options`` is ``default_options`` updated with ``config.method_options``
    (unknown keys raise a ``ValueError`` naming them), so every loss term has a switch and a weight
    that a run's ``config.json`` records.
    """

    name: ClassVar[str] = "base"
    #: network registry names for ``(net_a, net_b)`` when ``config.networks`` is not given
    default_networks: ClassVar[tuple[str, str]] = ("vnet", "resnet_vnet")
    #: ``"dual"`` (two independently trained networks) or ``"mean_teacher"`` (net_b = EMA of net_a)
    model_kind: ClassVar[str] = "dual"
    #: False: the loop sets ``unlabeled_bs = 0`` (supervised baselines)
    uses_unlabeled: ClassVar[bool] = True
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: TrainConfig):
        self.config = config
        given = dict(getattr(config, "method_options", None) or {})
        unknown = sorted(set(given) - set(self.default_options))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; "
                f"known: {', '.join(sorted(self.default_options)) or 'none'}"
            )
        self.options: dict[str, Any] = {**self.default_options, **given}

    # ------------------------------------------------------------------ model and optimisers
    def network_names(self) -> tuple[str, str]:
        """Registry names of ``(net_a, net_b)``: ``config.networks`` or the method's defaults."""
        nets = getattr(self.config, "networks", None)
        return tuple(nets) if nets else self.default_networks  # type: ignore[return-value]

    def network_kwargs(self, in_channels: int, num_classes: int) -> dict[str, Any]:
        """Keyword arguments passed to ``build_network`` for both networks."""
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "base_filters": getattr(self.config, "base_filters", 16),
            "normalization": getattr(self.config, "network_normalization", "batchnorm"),
            "has_dropout": getattr(self.config, "has_dropout", True),
        }

    def build_model(self, in_channels: int, num_classes: int) -> DualModel:
        """Build the two networks (independently initialised) wrapped in a ``DualModel``."""
        from napari_sscce.models.dual import DualModel
        from napari_sscce.models.registry import build_network

        name_a, name_b = self.network_names()
        kwargs = self.network_kwargs(in_channels, num_classes)
        net_a = build_network(name_a, **kwargs)
        net_b = build_network(name_b, **kwargs)
        if self.model_kind == "mean_teacher":
            net_b.load_state_dict(net_a.state_dict())
            for p in net_b.parameters():
                p.requires_grad_(False)
        return DualModel(net_a, net_b, kind=self.model_kind)

    def trainable_networks(self, model: DualModel) -> list[torch.nn.Module]:
        """Networks that receive gradient: both for ``"dual"``, the student only for ``"mean_teacher"``."""
        if self.model_kind == "mean_teacher":
            return [model.net_a]
        return [model.net_a, model.net_b]

    def optimizers(self, model: DualModel) -> list[torch.optim.Optimizer]:
        """One SGD optimiser per trainable network (``config.lr``, ``momentum``, ``weight_decay``)."""
        cfg = self.config
        return [
            torch.optim.SGD(
                [p for p in net.parameters() if p.requires_grad],
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=bool(getattr(cfg, "nesterov", False)),
            )
            for net in self.trainable_networks(model)
        ]

    # ------------------------------------------------------------------ data and losses
    def extra_targets(
        self, label: np.ndarray, mask: np.ndarray | None, num_classes: int
    ) -> dict[str, np.ndarray]:
        """Per-case targets, computed once per labeled case and cached by the sampler.

        Returns arrays of shape ``[K, Z, Y, X]`` that are cropped, flipped and rotated with the patch.
        """
        return {}

    def losses(self, model: DualModel, batch: Batch, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the total loss (one scalar) and the logged terms (plain floats).

        The loop calls ``backward`` on the total, then ``step`` and ``zero_grad`` on every optimiser.
        ``iteration`` counts from 0.
        """
        raise NotImplementedError

    def after_step(self, model: DualModel, iteration: int) -> None:
        """Hook called after the optimiser steps (e.g. EMA update of a teacher)."""

    # ------------------------------------------------------------------ helpers
    def rampup_weight(self, iteration: int, base: float = 1.0) -> float:
        """``base * sigmoid_rampup(iteration // rampup_step, rampup_length)`` with the config's scale.

        ``config.rampup_step`` defaults to 150 iterations per ramp unit at 6000 iterations and
        scales with the iteration budget for shorter runs (see ``TrainConfig.resolved_rampup_step``).
        """
        from napari_sscce.methods.losses import sigmoid_rampup

        step = self.config.resolved_rampup_step() if hasattr(self.config, "resolved_rampup_step") else 150
        length = getattr(self.config, "rampup_length", 40)
        return float(base) * sigmoid_rampup(iteration // max(1, step), length)
