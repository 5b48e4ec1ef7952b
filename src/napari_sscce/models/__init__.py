"""3D segmentation networks (VNet, ResNet-VNet, dual-task VNet), the two-network model and model files."""

from napari_sscce.models.checkpoint import (
    Checkpoint,
    CheckpointError,
    import_reference_vnet,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from napari_sscce.models.dual import DualModel, build_dual_model
from napari_sscce.models.dualtask_vnet import DualTaskVNet
from napari_sscce.models.registry import NETWORKS, build_network
from napari_sscce.models.resnet_vnet import ResNetVNet
from napari_sscce.models.vnet import VNet

__all__ = [
    "NETWORKS",
    "Checkpoint",
    "CheckpointError",
    "DualModel",
    "DualTaskVNet",
    "ResNetVNet",
    "VNet",
    "build_dual_model",
    "build_network",
    "import_reference_vnet",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
