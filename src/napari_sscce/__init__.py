"""napari-sscce: semi-supervised 3D medical image segmentation for napari, the command line and Python."""

__version__ = "0.1.0"
