"""Network registry: build any network of the package by name."""

from __future__ import annotations

from torch import nn

from napari_sscce.models.dualtask_vnet import DualTaskVNet
from napari_sscce.models.resnet_vnet import ResNetVNet
from napari_sscce.models.vnet import VNet

#: Network classes by registry name.
NETWORKS: dict[str, type[nn.Module]] = {
    "vnet": VNet,
    "resnet_vnet": ResNetVNet,
    "dualtask_vnet": DualTaskVNet,
}


def build_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name``.

    Parameters
    ----------
    name : str
        One of ``"vnet"``, ``"resnet_vnet"``, ``"dualtask_vnet"``.
    **kwargs
        Constructor arguments: ``in_channels``, ``num_classes``, ``base_filters=16``,
        ``normalization="batchnorm"``, ``has_dropout=True`` (and ``layers`` for ``"resnet_vnet"``).

    Returns
    -------
    nn.Module
        The network; its ``.spec`` is ``{"name": name, "kwargs": {...}}`` (all arguments, defaults included).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or unknown arguments.
    """
    try:
        cls = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(sorted(NETWORKS))}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for network {name!r}: {exc}") from exc
