"""Sliding-window inference of two-network models, with uncertainty maps.

- :mod:`~napari_sscce.inference.config`: :class:`InferenceConfig` (defaults for the CLI and the widgets);
- :mod:`~napari_sscce.inference.predict`: :func:`predict_volume` -> :class:`Prediction` (probabilities,
  labels, entropy, KL), :func:`check_low_precision`;
- :mod:`~napari_sscce.inference.files`: :func:`predict_files` (``sscce predict``);
- :mod:`~napari_sscce.inference.sliding_window`: the window engine (Gaussian / uniform blending, TTA,
  out-of-memory fallback);
- :mod:`~napari_sscce.inference.device`: device and precision choice;
- :mod:`~napari_sscce.inference.fast`: inference-only model rewrites for CPUs (BatchNorm folding, fused
  convolutions, bf16 packed weights);
- :mod:`~napari_sscce.inference.postprocess`: largest connected component.

Nothing is imported here so that reading the config (widgets) does not load torch.
"""
