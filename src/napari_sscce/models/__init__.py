"""3D segmentation networks (VNet, ResNet-VNet, dual-task VNet), the two-network model and checkpoints."""

from napari_sscce.models.dual import DualModel, build_dual_model
from napari_sscce.models.dualtask_vnet import DualTaskVNet
from napari_sscce.models.registry import NETWORKS, build_network
from napari_sscce.models.resnet_vnet import ResNetVNet
from napari_sscce.models.vnet import VNet

__all__ = ["NETWORKS", "DualModel", "DualTaskVNet", "ResNetVNet", "VNet", "build_dual_model", "build_network"]
