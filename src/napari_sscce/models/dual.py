"""Two networks held as one model: the CCE dual network, a mean teacher, or a single imported network."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from napari_sscce.models.registry import build_network

#: ``"dual"``: two independently trained nets (CCE, supervised); ``"mean_teacher"``: net_b is the EMA
#: teacher of net_a (UG-MCL), without gradients; ``"single"``: one network in both places (imported weights).
KINDS = ("dual", "mean_teacher", "single")

class DualModel(nn.Module):
    """Two segmentation networks with the same input channels and classes.

    Parameters
    ----------
    net_a : nn.Module
        First network (the student for ``kind="mean_teacher"``). Must have a ``.spec`` (networks built by
        :func:`~napari_sscce.models.registry.build_network` have one).
    net_b : nn.Module, optional
        Second network (the EMA teacher for ``kind="mean_teacher"``); ignored and set to ``net_a`` for
        ``kind="single"``.
    kind : {"dual", "mean_teacher", "single"}
        How the two are related. For ``"mean_teacher"`` the parameters of ``net_b`` get
        ``requires_grad=False``.
    """

    def __init__(self, net_a: nn.Module, net_b: nn.Module | None = None, kind: str = "dual"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown DualModel kind {kind!r}; choose one of {', '.join(KINDS)}")
        if kind == "single":
            net_b = net_a
        elif net_b is None:
            raise ValueError(f"DualModel kind {kind!r} needs two networks, got net_b=None")
        for label, net in (("net_a", net_a), ("net_b", net_b)):
            if not hasattr(net, "spec"):
                raise ValueError(f"{label} ({type(net).__name__}) has no .spec; build it with build_network")
        if (net_a.in_channels, net_a.num_classes) != (net_b.in_channels, net_b.num_classes):
            raise ValueError(
                "the two networks disagree: net_a has "
                f"{net_a.in_channels} input channel(s) / {net_a.num_classes} classes, net_b has "
                f"{net_b.in_channels} / {net_b.num_classes}"
            )
        self.kind = kind
        self.net_a = net_a
        self.net_b = net_b
        if kind == "mean_teacher":
            for p in net_b.parameters():
                p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        """Number of output classes (background included)."""
        return int(self.net_a.num_classes)

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return int(self.net_a.in_channels)

    @property
    def arch(self) -> dict[str, Any]:
        """``{"a": {"name", "kwargs"}, "b": {"name", "kwargs"}, "kind"}``: enough to rebuild the model."""
        return {"a": copy.deepcopy(self.net_a.spec), "b": copy.deepcopy(self.net_b.spec), "kind": self.kind}

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> DualModel:
        """Build a freshly initialised model from an :attr:`arch` dictionary.

        Raises
        ------
        ValueError
            When ``arch`` lacks an entry or names an unknown network or kind.
        """
        try:
            kind = arch.get("kind", "dual")
            spec_a = arch["a"]
            net_a = build_network(spec_a["name"], **spec_a.get("kwargs", {}))
            if kind == "single":
                return cls(net_a, None, kind="single")
            spec_b = arch["b"]
            net_b = build_network(spec_b["name"], **spec_b.get("kwargs", {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed model architecture {arch!r}: missing or bad entry {exc}") from exc
        return cls(net_a, net_b, kind=kind)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits_a, logits_b)``, each ``[B, num_classes, Z, Y, X]``.

        For ``kind="single"`` the network runs once and the same tensor is returned twice.
        """
        logits_a = self.net_a(x)[0]
        if self.kind == "single":
            return logits_a, logits_a
        return logits_a, self.net_b(x)[0]


def build_dual_model(method: str, in_channels: int = 1, num_classes: int = 2, **net_kwargs: Any) -> DualModel:
    """The model a training method uses, freshly initialised: the method class decides (``new_model``).

    Parameters
    ----------
    method : str
        A registered training method (``napari_sscce.methods``), e.g. ``"cce"``.
    in_channels, num_classes : int
        Input channels and classes (background included).
    **net_kwargs
        Further network arguments for both nets (``base_filters``, ``normalization``, ``has_dropout``).
    """
    from napari_sscce.methods import get_method  # methods build models; models do not know methods

    return get_method(method).new_model(in_channels, num_classes, **net_kwargs)
