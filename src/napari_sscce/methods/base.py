"""The interface between the training loop and a training method.

The loop (``napari_sscce.training.loop``) owns everything generic: autocast, backward, gradient
scaling, optimiser steps, learning-rate schedules, DDP wrapping, validation, checkpoints, resume and
cancel. A method owns what is specific to it: which two networks it builds, its per-term losses, the
extra per-case targets it needs (e.g. signed distance maps) and any post-step update (e.g. an EMA
teacher). A method class is the one description of a method (name, label, networks, model kind, options);
it registers with :func:`napari_sscce.methods.registry.register_method` and everything else (CLI choices,
the fine-tune widget, which methods may continue which model) is derived from the registry.
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

    Subclasses set ``name``, ``label``, ``default_networks``, ``model_kind`` and ``default_options``,
    implement :meth:`losses` and register with ``register_method``. ``self.options`` is
    :data:`common_options`, ``default_options`` and ``experimental_options`` (ablation variants kept apart
    from the documented method) updated with ``config.method_options`` (unknown keys raise a ``ValueError``
    naming them), so every loss term has a switch and a weight that a run's ``config.json`` records.
    """

    name: ClassVar[str] = "base"
    #: what the widget shows
    label: ClassVar[str] = "base"
    #: network registry names for ``(net_a, net_b)`` when ``config.networks`` is not given
    default_networks: ClassVar[tuple[str, str]] = ("vnet", "resnet_vnet")
    #: ``"dual"`` (two independently trained networks) or ``"mean_teacher"`` (net_b = EMA of net_a)
    model_kind: ClassVar[str] = "dual"
    #: False: the loop sets ``unlabeled_bs = 0`` (supervised baselines)
    uses_unlabeled: ClassVar[bool] = True
    default_options: ClassVar[dict[str, Any]] = {}
    #: ablation variants kept apart from the method's documented options (same ``--option`` switches)
    experimental_options: ClassVar[dict[str, Any]] = {}
    #: options every method has: ``l2sp_weight`` > 0 pulls the trainable weights toward the weights the run
    #: started from (L2-SP, Li et al. 2018), applied after each optimiser step as ``w -= lr * l2sp_weight *
    #: (w - w_start)``; fine-tuning uses it to keep what the starting model knew
    common_options: ClassVar[dict[str, Any]] = {"l2sp_weight": 0.0}

    def __init__(self, config: TrainConfig):
        self.config = config
        given = dict(getattr(config, "method_options", None) or {})
        known = {**self.common_options, **self.default_options, **self.experimental_options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        self.options: dict[str, Any] = {**known, **given}
        self._anchor: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._optimizers: list[torch.optim.Optimizer] = []

    # ------------------------------------------------------------------ what the class describes
    @classmethod
    def accepts_networks(cls, names: tuple[str, ...]) -> bool:
        """Whether the method can train networks of these registry names (default: any)."""
        return True

    @classmethod
    def can_continue(cls, arch: dict[str, Any]) -> bool:
        """Whether the method can continue training a model of architecture ``arch`` (``DualModel.arch``).

        The model must be of the method's ``model_kind`` and its networks acceptable to the method.
        """
        try:
            names = (str(arch["a"]["name"]), str(arch["b"]["name"]))
        except (KeyError, TypeError):
            return False
        return arch.get("kind", "dual") == cls.model_kind and cls.accepts_networks(names)

    @classmethod
    def new_model(
        cls,
        in_channels: int = 1,
        num_classes: int = 2,
        networks: tuple[str, str] | None = None,
        **net_kwargs: Any,
    ) -> DualModel:
        """A freshly initialised model of this method: its two networks, related as ``model_kind`` says.

        Parameters
        ----------
        in_channels, num_classes : int
            Input channels and classes (background included).
        networks : tuple of str, optional
            Registry names of ``(net_a, net_b)``; default ``default_networks``.
        **net_kwargs
            Further ``build_network`` arguments for both (``base_filters``, ``normalization``, ...).
            For ``"mean_teacher"`` net_b starts as a copy of net_a (without gradients).
        """
        from napari_sscce.models.dual import DualModel
        from napari_sscce.models.registry import build_network

        name_a, name_b = networks or cls.default_networks
        kwargs = {"in_channels": in_channels, "num_classes": num_classes, **net_kwargs}
        net_a = build_network(name_a, **kwargs)
        net_b = build_network(name_b, **kwargs)
        if cls.model_kind == "mean_teacher":
            net_b.load_state_dict(net_a.state_dict())
        return DualModel(net_a, net_b, kind=cls.model_kind)

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
        """The model of this run: :meth:`new_model` with the config's networks and network arguments."""
        kwargs = self.network_kwargs(in_channels, num_classes)
        return self.new_model(networks=self.network_names(), **kwargs)

    def trainable_networks(self, model: DualModel) -> list[torch.nn.Module]:
        """Networks that receive gradient: both for ``"dual"``, the student only for ``"mean_teacher"``."""
        if self.model_kind == "mean_teacher":
            return [model.net_a]
        return [model.net_a, model.net_b]

    def optimizers(self, model: DualModel) -> list[torch.optim.Optimizer]:
        """One SGD optimiser per trainable network (``config.lr``, ``momentum``, ``weight_decay``).

        Called once, on the model the run starts from; with ``l2sp_weight`` > 0 its trainable weights are
        kept as the anchor of the L2-SP pull (see :meth:`after_step`).
        """
        cfg = self.config
        if float(self.options["l2sp_weight"]) > 0:
            self._anchor = [
                (p, p.detach().clone())
                for net in self.trainable_networks(model)
                for p in net.parameters()
                if p.requires_grad
            ]
        self._optimizers = [
            torch.optim.SGD(
                [p for p in net.parameters() if p.requires_grad],
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=bool(getattr(cfg, "nesterov", False)),
            )
            for net in self.trainable_networks(model)
        ]
        return self._optimizers

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
        """Hook called after the optimiser steps (e.g. EMA update of a teacher); subclasses call ``super()``.

        Applies the L2-SP pull toward the starting weights when ``l2sp_weight`` > 0.
        """
        self.pull_to_anchor()

    @torch.no_grad()
    def pull_to_anchor(self) -> None:
        """``w -= lr * l2sp_weight * (w - w_start)``: one step on ``l2sp_weight / 2 * |w - w_start|^2``."""
        weight = float(self.options["l2sp_weight"])
        if weight <= 0 or not self._anchor or not self._optimizers:
            return
        rate = min(1.0, float(self._optimizers[0].param_groups[0]["lr"]) * weight)
        for param, start in self._anchor:
            param.sub_(rate * (param - start))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state the method keeps between steps (saved in ``train_state.pt``; default none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume)."""

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
