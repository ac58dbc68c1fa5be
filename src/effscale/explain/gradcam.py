"""The Grad-CAM driver: pytorch-grad-cam's methods run on several layers at once, in batches,
with every override of its internals in this one module.

Written against grad-cam 1.5.x (tested with 1.5.7; pyproject.toml pins >=1.5,<1.6). It relies
on these internals of `pytorch_grad_cam`, any of which a new release may change:
- `BaseCAM.forward` calls `self.compute_cam_per_layer(input_tensor, targets, eigen_smooth)`
  and then `self.aggregate_multi_layers(per_layer)`; both are replaced on the instance
  (`layer_maps`), the first by `_aligned_cam_per_layer`, the second by a concatenation.
- `BaseCAM.get_cam_image(input_tensor, layer, targets, activations, grads, eigen_smooth)`,
  `engine.activations_and_grads` (`.activations`, `.gradients`, `.release()`),
  `engine.target_layers`, `engine.outputs`, and ScoreCAM's `engine.batch_size`.
- `score_cam` and `ablation_cam` reach tqdm as their module's attribute (`import tqdm`), which
  `quiet_progress` swaps for a pass-through.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .methods import method_class


def _module(model, index: int):
    """Layer `index` (0..6 = model.stages[index], 7 = model.head) as a module."""
    return model.head if index == len(model.stages) else model.stages[index]


def _passthrough(iterable, *args, **kwargs):
    return iterable


@contextlib.contextmanager
def quiet_progress():
    """Silence pytorch-grad-cam's progress bars for the duration. ScoreCAM wraps its per-image
    loop in a tqdm bar on stderr, one bar per image, which buries effscale's own output; it
    reaches tqdm as its module's attribute (`import tqdm; tqdm.tqdm(...)`), so that attribute
    is swapped for a pass-through and restored afterwards."""
    swapped = []
    for name in ("pytorch_grad_cam.score_cam", "pytorch_grad_cam.ablation_cam"):
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, "tqdm", None), types.ModuleType):
            swapped.append((module, module.tqdm))
            module.tqdm = types.SimpleNamespace(tqdm=_passthrough)
    try:
        yield
    finally:
        for module, original in swapped:
            module.tqdm = original


def layer_strides(model) -> list[int]:
    """Cumulative stride of the 7 stages and the head: feature (i, j) of layer k is centred on
    input pixel (strides[k] * i, strides[k] * j). Every conv is padded by (kernel - 1) // 2
    with an odd kernel, so each stride-2 conv puts its output i over its input 2i."""
    strides, stride = [], model.stem_stride
    for stage in model.spec.stages:
        stride *= stage.stride
        strides.append(stride)
    return strides + [stride]


def upsample_aligned(cams: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """(N, h, w) feature-resolution maps -> (N, height, width), bilinear, each feature placed
    over the input pixel its receptive field is centred on (input pixel x samples feature
    coordinate x / stride; beyond the last feature the edge value holds).

    Why not pytorch-grad-cam's resize: it stretches the h x w map over the image as if feature
    i covered input pixels [stride * i, stride * (i + 1)), i.e. centred at stride * i +
    (stride - 1) / 2, so every map comes out shifted right and down by (stride - 1) / 2 pixels:
    3.5 px for a stride-8 stage, a tenth of a 32-px image, enough to move a peak off a small
    object."""
    t = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))[:, None]
    h, w = t.shape[-2:]
    ys = torch.arange(height, dtype=torch.float32) / stride
    xs = torch.arange(width, dtype=torch.float32) / stride
    # grid_sample with align_corners=True: -1 and 1 are the centres of the first and last
    # features
    gy = ys / max(h - 1, 1) * 2 - 1 if h > 1 else torch.zeros_like(ys)
    gx = xs / max(w - 1, 1) * 2 - 1 if w > 1 else torch.zeros_like(xs)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)  # (height, width, (x, y))
    out = F.grid_sample(t, grid.expand(len(t), -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out[:, 0].numpy()


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Each (H, W) map rescaled to [0, 1], as pytorch-grad-cam scales its maps."""
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return ((maps - low) / (span + 1e-7)).astype(np.float32)


def _aligned_cam_per_layer(engine, strides):
    """A replacement for BaseCAM.compute_cam_per_layer: the same per-layer CAM (the method's
    own weights, ReLU), upsampled with upsample_aligned instead of pytorch-grad-cam's resize,
    and the layers kept apart instead of averaged (aggregate_multi_layers is bypassed)."""

    def compute(input_tensor, targets, eigen_smooth):
        grads = engine.activations_and_grads.gradients
        height, width = input_tensor.shape[-2:]
        per_layer = []
        for k, (layer, acts) in enumerate(zip(engine.target_layers,
                                              engine.activations_and_grads.activations)):
            grad = grads[k].cpu().numpy() if k < len(grads) else None
            cam = engine.get_cam_image(input_tensor, layer, targets, acts.cpu().numpy(), grad,
                                       eigen_smooth)
            cam = upsample_aligned(np.maximum(cam, 0), strides[k], height, width)
            per_layer.append(_normalise(cam)[:, None])
        return per_layer

    return compute


def layer_maps(model, inputs: torch.Tensor, targets, *, method: str = "gradcam", layers,
               batch_size: int = 16) -> tuple[np.ndarray, torch.Tensor]:
    """pytorch-grad-cam's `method` on several layers (indices) at once, in batches: one forward
    and backward pass gives every layer's map. Returns ((N, L, H, W) maps in [0, 1], logits),
    the maps in the order of `layers`."""
    layers = list(layers)
    # pytorch-grad-cam keeps activations and gradients in the order the layers run, not in
    # the order they are named: hand it the layers in running order, reorder the maps after
    running = sorted(set(layers))
    engine = method_class(method)(model, [_module(model, i) for i in running])
    strides = layer_strides(model)
    engine.compute_cam_per_layer = _aligned_cam_per_layer(engine, [strides[i] for i in running])
    engine.aggregate_multi_layers = lambda per_layer: np.concatenate(per_layer, axis=1)
    if method == "scorecam":
        engine.batch_size = batch_size  # its forward passes per channel, batched
    maps, logits = [], []
    try:
        with torch.enable_grad(), quiet_progress():
            for lo in range(0, len(inputs), batch_size):
                x = inputs[lo:lo + batch_size]
                chosen = [ClassifierOutputTarget(int(c)) for c in targets[lo:lo + batch_size]]
                maps.append(engine(input_tensor=x, targets=chosen))
                logits.append(engine.outputs.detach().float().cpu())
    finally:
        # not `with engine`: its __exit__ swallows IndexError, hiding real bugs
        engine.activations_and_grads.release()
    return np.concatenate(maps)[:, [running.index(i) for i in layers]], torch.cat(logits)


def compute_maps(model, inputs: torch.Tensor, targets, *, method: str = "gradcam",
                 layer, batch_size: int = 16) -> tuple[np.ndarray, torch.Tensor]:
    """pytorch-grad-cam's `method` on `layer` (a `layers.LayerChoice`: the mean of its layers'
    maps when it fuses several), in batches: ((N, H, W) maps in [0, 1], logits). `layer` is not
    annotated with its type: importing `layers` here would be a cycle (it imports this)."""
    maps, logits = layer_maps(model, inputs, targets, method=method, layers=layer.layers,
                              batch_size=batch_size)
    if maps.shape[1] == 1:
        return maps[:, 0], logits
    return _normalise(maps.mean(1)), logits
