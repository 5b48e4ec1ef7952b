"""Between napari layers and the core: volumes from layers, prediction layers on the image's grid.

Layer names tie the results to their image: ``"<image> segmentation"`` (Labels, editable),
``"<image> entropy"`` and ``"<image> KL"`` (Image, contrast [0, 1], colormap ``inferno`` / ``magma``,
additive blending at opacity 0.4: certain voxels add nothing and the anatomy stays visible),
``"<image> probabilities A"`` / ``"... B"`` (optional, one channel per class).
Running again updates these layers' data in place instead of adding copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sscce.io.napari_io import volume_from_layer as strict_volume_from_layer
from napari_sscce.io.volume import Volume

SEGMENTATION = "segmentation"
ENTROPY = "entropy"
#: metadata key of an entropy layer: the model's number of classes (its entropy is divided by ln C)
NUM_CLASSES_KEY = "sscce_num_classes"
KL = "KL"
ROLE_KEY = "sscce_role"
IMAGE_KEY = "sscce_image"
#: layer metadata key: the workspace case this layer was added as (the fine-tune widget updates that case)
CASE_KEY = "sscce_case"


def layer_kind(layer: Any) -> str:
    """``"image"``, ``"labels"`` or the lower-case class name of any other layer (public API only)."""
    from napari.layers import Image, Labels

    if isinstance(layer, Labels):
        return "labels"
    if isinstance(layer, Image):
        return "image"
    return type(layer).__name__.lower()


def result_name(image_name: str, role: str) -> str:
    """Name of the layer holding ``role`` (``"segmentation"``, ``"entropy"``, ``"KL"``) of an image."""
    return f"{image_name} {role}"


def volume_from_layer(layer: Any, *, is_label: bool = False) -> Volume:
    """A :class:`Volume` for a 3D napari layer, through the one strict conversion
    (:func:`napari_sscce.io.napari_io.volume_from_layer`, also used by File > Save).

    The geometry the reader stored in ``layer.metadata["sscce_volume"]`` is used only while it still
    matches the layer's ``scale``, ``translate``, ``rotate``, ``shear`` and ``affine``; once a person changed
    any of them in napari, the layer's own transform is what they see and what they corrected, so the
    volume's spacing and affine are rebuilt from it (a layer never enters the labeled set with stale
    spacing).

    Raises
    ------
    ValueError
        When the layer is not 3D (single channel).
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    ndim = np.ndim(data)
    if ndim != 3:
        raise ValueError(
            f"layer {layer.name!r} has {ndim} dimensions (shape {np.shape(data)}); "
            "a 3D (z, y, x) volume is needed"
        )
    meta = {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": layer.affine.affine_matrix,
        "metadata": dict(layer.metadata),
    }
    volume = strict_volume_from_layer(data, meta, is_label=is_label)
    volume.metadata["name"] = layer.name
    return volume


def grid_kwargs(image_layer: Any) -> dict[str, Any]:
    """``scale``, ``translate``, ``affine``, ``rotate`` and ``shear`` of a layer: results go on its grid."""
    return {
        "scale": tuple(image_layer.scale),
        "translate": tuple(image_layer.translate),
        "affine": image_layer.affine.affine_matrix,
        "rotate": image_layer.rotate,
        "shear": image_layer.shear,
    }


def upsert_layer(viewer: Any, name: str, data: np.ndarray, layer_type: str, **kwargs: Any) -> Any:
    """Update the layer ``name`` (same type) in place, or add it; returns the layer.

    ``kwargs`` are the layer's keyword arguments (scale, colormap ...). On update only the grid
    (``scale``, ``translate``, ``affine``) and ``metadata`` are re-applied so that a person's display
    choices (opacity, colormap) survive a re-run.
    """
    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is not None and layer_kind(existing) == layer_type:
        for key in ("scale", "translate", "affine", "rotate", "shear"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        if "metadata" in kwargs:
            existing.metadata = {**existing.metadata, **kwargs["metadata"]}
        existing.data = data
        if layer_type == "image" and "contrast_limits" in kwargs:
            existing.contrast_limits = kwargs["contrast_limits"]
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    add = {"image": viewer.add_image, "labels": viewer.add_labels}[layer_type]
    return add(data, name=name, **kwargs)


def _num_classes(prediction: Any) -> int | None:
    """The classes of a prediction's probabilities (None when it carries none)."""
    prob = getattr(prediction, "probabilities", None)
    return None if prob is None else int(np.shape(prob)[0])


def show_prediction(
    viewer: Any, image_layer: Any, prediction: Any, per_network: bool = False
) -> dict[str, Any]:
    """Add or update the segmentation, entropy and KL layers of ``image_layer``.

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The segmented image; results are put on its grid.
    prediction : napari_sscce.inference.predict.Prediction
        Holds ``labels``, ``entropy``, ``kl`` and optionally ``per_network``.
    per_network : bool
        Also show each network's probabilities (one layer per network, classes on the first axis).

    Returns
    -------
    dict
        Role -> layer.
    """
    grid = grid_kwargs(image_layer)
    image = image_layer.name

    def meta(role: str) -> dict[str, Any]:
        return {"metadata": {ROLE_KEY: role, IMAGE_KEY: image}}

    layers = {
        SEGMENTATION: upsert_layer(
            viewer,
            result_name(image, SEGMENTATION),
            np.asarray(prediction.labels).astype(np.uint8),
            "labels",
            opacity=0.5,
            **grid,
            **meta(SEGMENTATION),
        ),
        ENTROPY: upsert_layer(
            viewer,
            result_name(image, ENTROPY),
            np.asarray(prediction.entropy, dtype=np.float32),
            "image",
            colormap="inferno",
            contrast_limits=(0.0, 1.0),
            blending="additive",
            opacity=0.4,
            visible=True,
            **grid,
            metadata={ROLE_KEY: ENTROPY, IMAGE_KEY: image, NUM_CLASSES_KEY: _num_classes(prediction)},
        ),
        KL: upsert_layer(
            viewer,
            result_name(image, KL),
            np.asarray(prediction.kl, dtype=np.float32),
            "image",
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            blending="additive",
            opacity=0.4,
            visible=False,
            **grid,
            **meta(KL),
        ),
    }
    if per_network and getattr(prediction, "per_network", None) is not None:
        probs_grid = {**grid}
        for tag, probs in zip(("A", "B"), prediction.per_network, strict=True):
            probs = np.asarray(probs, dtype=np.float32)
            role = f"probabilities {tag}"
            # classes become a leading, unscaled axis
            kwargs = {
                "scale": (1.0, *probs_grid["scale"]),
                "translate": (0.0, *probs_grid["translate"]),
            }
            layers[role] = upsert_layer(
                viewer,
                result_name(image, role),
                probs,
                "image",
                colormap="viridis",
                contrast_limits=(0.0, 1.0),
                blending="additive",
                visible=False,
                **kwargs,
                **meta(role),
            )
    # the segmentation on top, so that it can be painted right away
    seg = layers[SEGMENTATION]
    viewer.layers.move(viewer.layers.index(seg), len(viewer.layers))
    viewer.layers.selection.active = seg
    return layers


def find_result_layer(viewer: Any, image_name: str, role: str) -> Any | None:
    """The ``role`` layer of image ``image_name``, or ``None``."""
    name = result_name(image_name, role)
    return viewer.layers[name] if name in viewer.layers else None


def images_with_uncertainty(viewer: Any) -> list[str]:
    """Names of the image layers that have both an entropy layer and a segmentation layer."""
    names = []
    for layer in viewer.layers:
        if layer_kind(layer) != "image" or layer.metadata.get(ROLE_KEY):
            continue
        if find_result_layer(viewer, layer.name, ENTROPY) and find_result_layer(
            viewer, layer.name, SEGMENTATION
        ):
            names.append(layer.name)
    return names
