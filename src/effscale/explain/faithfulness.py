"""Faithfulness of CAMs: does the map rank the pixels the model relies on first? The deletion
test (remove the most-activated pixels first), the insertion test (put them back into a blurred
image first) and the peak test (show only a window around the map's peak), which ranks the
layers for `--layer auto` (`layers.select_layer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Deletion test: fraction of pixels removed per step is 1 / DELETION_STEPS.
DELETION_STEPS = 10
# Peak test: the windows shown around each map's peak, as fractions of the image side:
# small enough that a window beside the object shows little of it.
PEAK_WINDOWS = (1 / 16, 1 / 8, 1 / 4)


@dataclass(frozen=True)
class DeletionScore:
    """Deletion test: remove the most-activated pixels first, watch the target probability.

    `cam_auc` / `random_auc`: mean over images of the area under probability-vs-fraction-removed
    (x in [0, 1]); lower is better, and a faithful map is below its random-order baseline.
    """

    cam_auc: float
    random_auc: float
    cam_curve: np.ndarray  # (steps + 1,) mean probability after removing k / steps of the pixels
    random_curve: np.ndarray
    per_image: np.ndarray  # (N,) AUC of each image's map
    steps: int

    @property
    def ratio(self) -> float:
        """cam_auc / random_auc: < 1 when the map beats random order."""
        return self.cam_auc / self.random_auc if self.random_auc > 0 else float("nan")


def _pixel_ranks(maps: np.ndarray, seed: int) -> torch.Tensor:
    """(N, H, W) maps -> (N, 1, H, W) rank of each pixel, 0 = most activated. Ties (e.g. the
    zeros ReLU leaves) are broken in a seeded random order, not in raster order, which would
    favour the top of the image."""
    n, h, w = maps.shape
    pixels = h * w
    tie = np.random.default_rng(seed).random((n, pixels))
    order = np.lexsort((tie, -maps.reshape(n, pixels).astype(np.float64)), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(pixels)[None].repeat(n, 0), axis=-1)
    return torch.from_numpy(rank.reshape(n, 1, h, w))


@torch.no_grad()
def _class_probability(model, images: torch.Tensor, classes: torch.Tensor,
                       batch_size: int) -> torch.Tensor:
    out = [model(images[lo:lo + batch_size]).float().softmax(-1)
           .gather(1, classes[lo:lo + batch_size, None])[:, 0]
           for lo in range(0, len(images), batch_size)]
    return torch.cat(out).cpu()


def _perturbation_curves(model, inputs, maps, classes, *, steps, start, end, batch_size,
                         seed) -> np.ndarray:
    """Probability of classes[i] on images that are `end` on the top k/steps of the pixels by
    `maps[i]` and `start` elsewhere, k = 0..steps. All channels of a pixel go together."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n, _, h, w = inputs.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be {(n, h, w)} to match the inputs, got {maps.shape}")
    rank = _pixel_ranks(maps, seed).to(inputs.device)
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.long, device=inputs.device)
    curves = torch.empty(n, steps + 1)
    for k in range(steps + 1):
        changed = int(round(k / steps * h * w))
        curves[:, k] = _class_probability(model, torch.where(rank < changed, end, start), classes,
                                          batch_size)
    return curves.numpy()


def deletion_curves(model, inputs: torch.Tensor, maps: np.ndarray, classes, *,
                    steps: int = DELETION_STEPS, baseline: float = 0.0, batch_size: int = 64,
                    seed: int = 0) -> np.ndarray:
    """Probability of `classes[i]` as the top k/steps of image i's pixels (by `maps[i]`) are
    replaced by `baseline`, k = 0..steps: an (N, steps + 1) array.

    `inputs` are normalised, so baseline 0 is the dataset mean colour: a removed pixel carries no
    information without being an out-of-distribution black. All channels of a pixel go
    together. Ties in a map are broken in a seeded random order.
    """
    return _perturbation_curves(model, inputs, maps, classes, steps=steps, start=inputs,
                                end=torch.full_like(inputs, baseline), batch_size=batch_size,
                                seed=seed)


def blurred(inputs: torch.Tensor) -> torch.Tensor:
    """What the insertion and peak tests start from: each image box-filtered twice with a
    window of about 1/8 of its side (odd, >= 3), which removes shapes while keeping colours and
    layout, so that partly restored images stay close to natural ones (a black or mean-colour
    start puts them far out of distribution)."""
    side = min(inputs.shape[-2:])
    k = max(3, (side // 8) | 1)
    x = inputs
    for _ in range(2):
        x = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    return x


def insertion_curves(model, inputs: torch.Tensor, maps: np.ndarray, classes, *,
                     steps: int = DELETION_STEPS, batch_size: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Probability of `classes[i]` as the top k/steps of image i's pixels (by `maps[i]`) are put
    back into its blurred version (`blurred`), k = 0..steps: an (N, steps + 1) array. Higher
    area under the curve = the map ranks the class evidence first."""
    return _perturbation_curves(model, inputs, maps, classes, steps=steps,
                                start=blurred(inputs), end=inputs, batch_size=batch_size,
                                seed=seed)


def peak_window_scores(model, inputs: torch.Tensor, maps: np.ndarray, classes, *,
                       windows=PEAK_WINDOWS, batch_size: int = 64) -> np.ndarray:
    """The peak test: for each image, the probability of `classes[i]` when only a square window
    centred on the peak of `maps[i]` is shown and the rest is blurred (`blurred`), averaged over
    window sides of `windows` x the image side. (N,) array; higher = the peak is on evidence."""
    n, _, h, w = inputs.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be {(n, h, w)} to match the inputs, got {maps.shape}")
    peak_y, peak_x = np.divmod(maps.reshape(n, -1).argmax(1), w)
    ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    start = blurred(inputs)
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.long, device=inputs.device)
    scores = []
    for fraction in windows:
        half = max(1, int(round(fraction * min(h, w) / 2)))
        shown = ((np.abs(ys - peak_y[:, None, None]) <= half) &
                 (np.abs(xs - peak_x[:, None, None]) <= half))
        shown = torch.from_numpy(shown[:, None]).to(inputs.device)
        scores.append(_class_probability(model, torch.where(shown, inputs, start), classes,
                                         batch_size))
    return torch.stack(scores).mean(0).numpy()


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of `curves`, sampled evenly on [0, 1]."""
    steps = curves.shape[-1] - 1
    return (curves[..., 1:] + curves[..., :-1]).sum(-1) / (2 * steps)


def deletion_score(model, inputs: torch.Tensor, maps: np.ndarray, classes, *,
                   steps: int = DELETION_STEPS, batch_size: int = 64, seed: int = 0
                   ) -> DeletionScore:
    """Deletion AUC of `maps` and of random maps (uniform noise: a random pixel order)."""
    cam = deletion_curves(model, inputs, maps, classes, steps=steps, batch_size=batch_size,
                          seed=seed)
    noise = np.random.default_rng(seed + 1).random(maps.shape)
    rand = deletion_curves(model, inputs, noise, classes, steps=steps, batch_size=batch_size,
                           seed=seed)
    cam_auc, rand_auc = curve_auc(cam), curve_auc(rand)
    return DeletionScore(float(cam_auc.mean()), float(rand_auc.mean()), cam.mean(0),
                         rand.mean(0), cam_auc, steps)
