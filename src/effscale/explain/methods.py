"""The CAM methods effscale offers, by name, and pytorch-grad-cam's class for each.

The classes are looked up when a map is computed, so that listing the methods (the CLI's
--method help) does not import pytorch-grad-cam and its OpenCV."""

from __future__ import annotations

# name -> class in pytorch_grad_cam
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM",
           "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}


def method_class(method: str):
    """The pytorch-grad-cam class of a method name (any case); ValueError for an unknown one."""
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    import pytorch_grad_cam
    return getattr(pytorch_grad_cam, METHODS[key])
