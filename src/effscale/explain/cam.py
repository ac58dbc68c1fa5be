"""Class activation maps for trained effscale models: which layer, which images, how faithful,
and whether the map finds the object.

The CAM methods themselves come from pytorch-grad-cam (`methods.py`). effscale's part is what
users of every EfficientNet implementation get wrong: the target layer, chosen by measurement
(`choose_layer` / `select_layer`: the mean of the two candidate stages whose maps pass a
perturbation test best on the images being explained, not the deepest map of some size), the
evaluation images at the model's own resolution and normalisation and balanced over the
classes, EMA weights, batching, faithfulness scores (`deletion_curves`, `insertion_curves`),
localisation against annotated boxes mapped through the eval transform (`map_box`,
`localise`) and the figures (`figures.py`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import types
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..data.folder import EVAL_CROP_FRACTION
from ..io.checkpoint import load_model_file, read_model_file
from ..model.spec import small_map_cures, stage_resolutions
from .methods import method_class

# A map smaller than this cannot say *where*: 1x1 is constant, 2x2 and 3x3 are quadrants.
MIN_MAP_SIZE = 4
# Deletion test: fraction of pixels removed per step is 1 / DELETION_STEPS.
DELETION_STEPS = 10
# Layer choice: the candidates are measured on this many images (the explained ones first,
# then more of the same split, class-balanced): the ranking must not hinge on a handful.
AUTO_IMAGES = 128
# Layer choice: auto averages the maps of this many best-ranked layers. The peak test ranks
# the right neighbourhood of layers reliably but not the best of two neighbours (their scores
# differ by ~0.01-0.03); the mean of the two localises within 5 points of the best single
# stage where either alone can miss it by 10 (BENCHMARKS.md, "Which layer finds the object").
AUTO_FUSE = 2
# Layer choice: the windows shown around each map's peak, as fractions of the image side:
# small enough that a window beside the object shows little of it.
PEAK_WINDOWS = (1 / 16, 1 / 8, 1 / 4)


# ---------------------------------------------------------------------------------------------
# Layer choice


@dataclass(frozen=True)
class LayerChoice:
    """The layer a CAM is computed on; with `fused`, the maps of more layers are averaged at
    the input resolution (auto's choice: `select_layer`)."""

    index: int  # 0..6 = model.stages[index], 7 = model.head; the best-ranked one when fused
    name: str  # "stage 5" or "head", as a user types it (`--layer 5`, `--layer head`)
    module: str  # "stages.4" or "head": the attribute path in the model
    size: int  # side of its feature map at the model's resolution
    reason: str  # why it was chosen, one line
    # auto only: (layer name, score) of every candidate, best first
    scores: tuple[tuple[str, float], ...] = ()
    fused: tuple[tuple[int, str, int], ...] = ()  # (index, name, size) of the other layers
    auto: bool = False  # chosen by select_layer, not asked for

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer whose map is averaged, the best-ranked first."""
        return (self.index,) + tuple(i for i, _, _ in self.fused)

    @property
    def label(self) -> str:
        """The layers' names only: "stage 2 + stage 1"."""
        return " + ".join([self.name] + [name for _, name, _ in self.fused])

    def __str__(self) -> str:
        parts = [(self.name, self.size)] + [(name, size) for _, name, size in self.fused]
        return " + ".join(f"{name} ({size}x{size} map)" for name, size in parts)


def layer_sizes(model, resolution: int | None = None) -> list[int]:
    """Feature-map side of the 7 stages and the head (8 entries), from the spec alone."""
    sizes = stage_resolutions(model.spec, resolution or model.spec.resolution,
                              model.stem_stride)[1:]
    return sizes + [sizes[-1]]  # the head is a 1x1 conv: same size as stage 7


def _layer_name(index: int, count: int) -> str:
    return "head" if index == count - 1 else f"stage {index + 1}"


def _module(model, index: int):
    return model.head if index == len(model.stages) else model.stages[index]


def _module_path(index: int, count: int) -> str:
    return "head" if index == count - 1 else f"stages.{index}"


def _choice(model, index: int, reason: str, resolution: int | None = None,
            scores=(), fused=(), auto: bool = False) -> LayerChoice:
    sizes = layer_sizes(model, resolution)
    count = len(sizes)
    return LayerChoice(index, _layer_name(index, count), _module_path(index, count),
                       sizes[index], reason, tuple(scores),
                       tuple((i, _layer_name(i, count), sizes[i]) for i in fused), auto)


def small_map_advice(model, resolution: int | None = None) -> str:
    """The two cures for a too-small final map, with the numbers for this model."""
    res = resolution or model.spec.resolution
    final = layer_sizes(model, res)[-1]
    return (f"the final feature map of {model.spec.name} is {final}x{final} at {res}x{res} input, "
            f"too small for a CAM to localise; "
            + small_map_cures(model.spec, res, model.stem_stride, MIN_MAP_SIZE))


def candidate_layers(model, resolution: int | None = None) -> list[int]:
    """The layers `auto` chooses from: every stage (and the head) whose map is at least
    MIN_MAP_SIZE square; when none is, the largest map, with a warning giving the cures."""
    sizes = layer_sizes(model, resolution)
    big = [i for i, s in enumerate(sizes) if s >= MIN_MAP_SIZE]
    if big:
        return big
    index = max(range(len(sizes)), key=lambda i: (sizes[i], -i))
    warnings.warn(f"{small_map_advice(model, resolution)}. No map is {MIN_MAP_SIZE}x"
                  f"{MIN_MAP_SIZE} or larger: using {_layer_name(index, len(sizes))} "
                  f"({sizes[index]}x{sizes[index]}).", UserWarning, stacklevel=3)
    return [index]


def choose_layer(model, layer: str | int = "auto", resolution: int | None = None, *,
                 inputs: torch.Tensor | None = None, classes=None, method: str = "gradcam",
                 batch_size: int = 16, seed: int = 0) -> LayerChoice:
    """The layer a CAM is computed on.

    `layer` may be a stage number 1..7 or "head" (warned about when its map is below
    MIN_MAP_SIZE), or "auto": measure every candidate layer (`candidate_layers`) on `inputs`
    (normalised, as the model sees them) explaining `classes`, and average the maps of the
    AUTO_FUSE that pass the peak test best (`select_layer`). Map size is no guide: in small or
    briefly trained networks the deepest maps >= 4x4 often point at the background
    (BENCHMARKS.md, "Which layer finds the object").
    """
    sizes = layer_sizes(model, resolution)
    if isinstance(layer, str) and layer.strip().lower() == "auto":
        if inputs is None or classes is None:
            raise ValueError("layer='auto' measures the candidate layers on images: pass inputs "
                             "and classes (cam() does), or a stage number 1..7 or 'head'")
        return select_layer(model, inputs, classes, candidates=candidate_layers(model, resolution),
                            method=method, batch_size=batch_size, seed=seed)
    index = parse_layer(layer, len(sizes))
    if sizes[index] < MIN_MAP_SIZE:
        warnings.warn(f"{_layer_name(index, len(sizes))} has a {sizes[index]}x{sizes[index]} map "
                      f"at {resolution or model.spec.resolution} px: its CAM cannot localise "
                      f"(use --layer auto, or see the cures: "
                      f"{small_map_advice(model, resolution)})",
                      UserWarning, stacklevel=2)
    return _choice(model, index, "asked for", resolution)


def parse_layer(layer: str | int, count: int = 8) -> int:
    """"3", 3, "stage 3" -> 2; "head" -> count - 1; anything else is a ValueError."""
    text = str(layer).strip().lower()
    if text == "head":
        return count - 1
    if text.startswith("stage"):
        text = text[5:].strip(" ._")
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= count - 1:
        raise ValueError(f"layer must be 'auto', a stage number 1..{count - 1} or 'head', "
                         f"got {layer!r}")
    return number - 1


def select_layer(model, inputs: torch.Tensor, classes, *, candidates, method: str = "gradcam",
                 batch_size: int = 16, seed: int = 0) -> LayerChoice:
    """The candidate layers whose map peaks point at the class evidence, by the peak test
    (`peak_window_scores`): show the model only a window around each map's peak, the rest of
    the image blurred, and rank the layers by how probable their windows keep the explained
    class. The AUTO_FUSE best are averaged. The test is the first step of region perturbation
    (Samek et al., 2017, "Evaluating the visualization of what a deep neural network has
    learned"), run as insertion from a blurred image (Petsiuk et al., 2018, RISE), and it asks
    what a peak-in-box rate asks: is the top of the map on the object? Averaging layers at the
    input resolution is LayerCAM's fusion (Jiang et al., 2021). BENCHMARKS.md compares this
    with the single best layer by the peak, insertion and deletion tests and with the old
    map-size rule.

    ScoreCAM runs a forward pass per channel per image, too slow to do for every candidate:
    its layers are chosen with Grad-CAM's maps, and the reason says so.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidate layers")
    count = len(layer_sizes(model))
    if len(candidates) == 1:
        return _choice(model, candidates[0], "auto: the only map large enough to localise",
                       auto=True)
    classes = np.asarray(classes)
    proxy = "gradcam" if method == "scorecam" else method
    maps, _ = layer_maps(model, inputs, classes, method=proxy, layers=candidates,
                         batch_size=batch_size)
    scores = [float(peak_window_scores(model, inputs, maps[:, k], classes).mean())
              for k in range(len(candidates))]
    order = sorted(range(len(candidates)), key=lambda k: -scores[k])
    ranked = tuple((_layer_name(candidates[k], count), round(scores[k], 4)) for k in order)
    best = [candidates[k] for k in order[:AUTO_FUSE]]
    via = " (layers compared with Grad-CAM maps)" if proxy != method else ""
    shown = ", ".join(f"{name} {score:.3f}" for name, score in ranked[:AUTO_FUSE])
    rest = "".join(f"; next {name} {score:.3f}" for name, score in ranked[AUTO_FUSE:][:1])
    reason = (f"auto: mean of the {len(best)} best of {len(candidates)} candidate layers by "
              f"the peak test on {len(inputs)} images (class probability from a window around "
              f"the map's peak: {shown}{rest}){via}")
    return _choice(model, best[0], reason, scores=ranked, fused=best[1:], auto=True)


# ---------------------------------------------------------------------------------------------
# Faithfulness


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


# ---------------------------------------------------------------------------------------------
# Boxes: annotated object positions, mapped to the model's input, and localisation rates


@dataclass(frozen=True)
class Localisation:
    """Where each map's peak and mass fall relative to the image's annotated box.

    boxes are in the model's input pixels (after the eval transform's resize and crop), as
    continuous coordinates: a pixel (x, y) covers [x, x + 1) x [y, y + 1).
    """

    boxes: np.ndarray  # (N, 4) float x0, y0, x1, y1
    peak_in_box: np.ndarray  # (N,) bool: the centre of the map's highest pixel is in the box
    energy: np.ndarray  # (N,) fraction of the map's total inside the box
    area: np.ndarray  # (N,) box area / image area: the chance a random peak lands in the box

    @property
    def rate(self) -> float:
        """Fraction of images whose map peak is inside the box (the pointing game)."""
        return float(self.peak_in_box.mean())

    @property
    def energy_rate(self) -> float:
        """Mean fraction of the map's mass inside the box."""
        return float(self.energy.mean())

    @property
    def chance(self) -> float:
        """The rate a map with a uniformly random peak would get."""
        return float(self.area.mean())


def _coverage(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W): how much of each pixel each box covers, in [0, 1]."""
    xs, ys = np.arange(width), np.arange(height)
    cover_x = np.clip(np.minimum(xs + 1, boxes[:, 2:3]) - np.maximum(xs, boxes[:, 0:1]), 0, 1)
    cover_y = np.clip(np.minimum(ys + 1, boxes[:, 3:4]) - np.maximum(ys, boxes[:, 1:2]), 0, 1)
    return cover_y[:, :, None] * cover_x[:, None, :]


def localise(maps: np.ndarray, boxes) -> Localisation:
    """Peak-in-box and energy-in-box of (N, H, W) maps against (N, 4) boxes in map pixels.
    A flat map (every pixel equal: no peak) counts as a miss."""
    maps = np.asarray(maps, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n, h, w = maps.shape
    if len(boxes) != n:
        raise ValueError(f"{len(boxes)} boxes for {n} maps")
    flat = maps.reshape(n, -1)
    y, x = np.divmod(flat.argmax(1), w)
    cx, cy = x + 0.5, y + 0.5
    inside = (boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])
    inside &= flat.max(1) > flat.min(1)
    cover = _coverage(boxes, h, w)
    total = flat.sum(1)
    energy = np.where(total > 0, (maps * cover).sum((1, 2)) / np.where(total > 0, total, 1), 0.0)
    return Localisation(boxes.astype(np.float32), inside, energy.astype(np.float32),
                        (cover.sum((1, 2)) / (h * w)).astype(np.float32))


def map_box(box, source_size: tuple[int, int], resolution: int, *,
            crop_fraction: float | None = None) -> tuple[float, float, float, float] | None:
    """A box [x0, y0, x1, y1] in source-image pixels -> the same box in the model's input
    pixels, under the eval transform.

    source_size: the source image's (width, height). crop_fraction: for image folders, the
    eval transform's (EVAL_CROP_FRACTION, `data.folder.folder_transform`): resize the short
    side to round(resolution / crop_fraction) and the long side in proportion (truncated, as
    torchvision does), then crop resolution x resolution from the centre (offsets rounded half
    to even, as torchvision does). None (in-memory datasets, `data.batching.to_model_input`): a
    plain resize of the whole image to resolution x resolution. The result is clipped to the
    input; None when the crop leaves nothing of the box.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = source_size
    new_w = new_h = resolution
    left = top = 0
    if crop_fraction is not None:
        short = round(resolution / crop_fraction)
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    sx, sy = new_w / width, new_h / height
    clip = lambda v: min(max(v, 0.0), float(resolution))  # noqa: E731
    out = (clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top))
    if out[2] <= out[0] or out[3] <= out[1]:
        return None
    return out


def _read_boxes_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such boxes file: {path}")
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"boxes file {path} is not JSON text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"boxes file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None


def load_boxes(boxes) -> dict[str, tuple[float, float, float, float]]:
    """A boxes file (JSON: image path -> [x0, y0, x1, y1] in source pixels, x1 and y1 exclusive)
    or such a dict -> {key: box}. Checks the form of each box (four numbers, x0 < x1, y0 < y1,
    x0, y0 >= 0); whether a box fits its image is checked against the image
    (`boxes_for_split`)."""
    source = "boxes"
    if isinstance(boxes, (str, Path)):
        source = f"boxes file {boxes}"
        boxes = _read_boxes_file(Path(boxes))
    if not isinstance(boxes, dict) or not boxes:
        raise ValueError(f"{source} must be a non-empty JSON object mapping image paths to "
                         f"[x0, y0, x1, y1]")
    out = {}
    for key, box in boxes.items():
        numbers = (isinstance(box, (list, tuple)) and len(box) == 4 and
                   all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                       math.isfinite(v) for v in box))
        if not numbers:
            raise ValueError(f"{source}: the box of {key!r} must be [x0, y0, x1, y1] (four "
                             f"numbers), got {json.dumps(box)}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"{source}: the box of {key!r} must have 0 <= x0 < x1 and "
                             f"0 <= y0 < y1, got {json.dumps(box)}")
        out[str(key)] = (x0, y0, x1, y1)
    return out


def _split_keys(split) -> list[tuple[str, ...]]:
    """For each image of a split, the keys a boxes file may name it by: for image folders its
    path relative to the folder (`val/cat/1.jpg`, as benchmarks/make_folder.py writes), to the
    split (`cat/1.jpg`) and in full; for in-memory splits its index ("17")."""
    samples = getattr(split, "samples", None)
    if samples is None:
        return [(str(i),) for i in range(len(split))]
    root = Path(split.root)
    return [(Path(os.path.relpath(path, root.parent)).as_posix(),
             Path(os.path.relpath(path, root)).as_posix(), Path(path).as_posix(),
             Path(path).resolve().as_posix()) for path, _ in samples]


def _source_size(split, index: int) -> tuple[int, int]:
    """(width, height) of one source image, from the file's header for image folders."""
    samples = getattr(split, "samples", None)
    if samples is None:
        return int(split.images.shape[-1]), int(split.images.shape[-2])
    from PIL import Image
    with Image.open(samples[index][0]) as image:
        return image.size


def _match_boxes(boxes: dict, split, split_name: str) -> dict[int, tuple[str, tuple]]:
    """{image index in the split: (key, box)} for the keys that name an image of the split."""
    keys = _split_keys(split)
    lookup = {}
    for i, names in enumerate(keys):
        for name in names:
            lookup.setdefault(name, i)
    matched = {}
    for key, box in boxes.items():
        name = key if key in lookup else Path(key).as_posix()
        if name in lookup:
            matched[lookup[name]] = (key, box)
    if not matched:
        example = keys[0][0] if keys else "?"
        raise ValueError(f"none of the {len(boxes)} boxes names an image of the {split_name} "
                         f"split: keys are paths like {example!r}")
    return matched


def boxes_for_split(boxes: dict, split, split_name: str, resolution: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Match a boxes dict to the images of a split: (indices of the boxed images, their boxes
    (N, 4) in the model's input pixels, how many boxes the eval transform's crop removed).
    Raises ValueError when no key names an image of the split, or a box does not fit its
    image."""
    crop = EVAL_CROP_FRACTION if getattr(split, "samples", None) is not None else None
    indices, mapped, lost = [], [], 0
    for i, (key, box) in sorted(_match_boxes(boxes, split, split_name).items()):
        width, height = _source_size(split, i)
        if box[2] > width or box[3] > height:
            raise ValueError(f"the box of {key!r} {list(box)} lies outside its "
                             f"{width}x{height} image")
        out = map_box(box, (width, height), resolution, crop_fraction=crop)
        if out is None:
            lost += 1
            continue
        indices.append(i)
        mapped.append(out)
    if not indices:
        raise ValueError(f"every box lies outside the centre crop the model sees "
                         f"({resolution}x{resolution})")
    return np.asarray(indices), np.asarray(mapped, dtype=np.float64), lost


# ---------------------------------------------------------------------------------------------
# Maps


@dataclass
class CamResult:
    maps: np.ndarray  # (N, H, W) float32 in [0, 1], at the model's input resolution
    images: np.ndarray  # (N, H, W, C) float32 in [0, 1]: the model's inputs, denormalised
    labels: np.ndarray  # (N,) true classes
    predictions: np.ndarray  # (N,) argmax classes
    confidences: np.ndarray  # (N,) softmax probability of the prediction
    targets: np.ndarray  # (N,) the class each map explains
    layer: LayerChoice
    method: str
    model_name: str
    class_names: tuple[str, ...]
    checkpoint: str = ""
    weights: str = ""  # "ema" or "raw"
    deletion: DeletionScore | None = None
    warnings: list[str] = field(default_factory=list)
    inputs: torch.Tensor | None = field(default=None, repr=False)  # normalised, for scoring
    localisation: Localisation | None = None  # with boxes: peak / energy in box per image
    indices: np.ndarray | None = None  # (N,) each image's index in its split
    boxes_lost: int = 0  # boxes the eval transform's centre crop removed entirely

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels

    def class_name(self, index: int) -> str:
        index = int(index)
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def figure(self, out_path: str | Path, **kwargs) -> Path:
        """The grid figure (see figures.grid_figure)."""
        from .figures import grid_figure
        return grid_figure(self, out_path, **kwargs)

    def rows(self) -> list[dict]:
        """One row per image, for effscale.io.table.render."""
        rows = []
        for i, (t, p, c, ok, g, m) in enumerate(zip(
                self.labels, self.predictions, self.confidences, self.correct, self.targets,
                self.maps)):
            row = {"image": i, "index": int(self.indices[i]) if self.indices is not None else i,
                   "true": self.class_name(t), "predicted": self.class_name(p),
                   "confidence": round(float(c), 4), "correct": bool(ok),
                   "target": self.class_name(g), "map_peak": _peak_text(m)}
            if self.localisation is not None:
                row["peak_in_box"] = bool(self.localisation.peak_in_box[i])
                row["energy_in_box"] = round(float(self.localisation.energy[i]), 3)
            rows.append(row)
        return rows


def _peak_text(cam_map: np.ndarray) -> str:
    y, x = np.unravel_index(int(np.argmax(cam_map)), cam_map.shape)
    return f"({int(x)},{int(y)})"


def _load(checkpoint, use_ema: bool):
    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.eval(), {}, getattr(checkpoint.spec, "name", "model")
    model, meta = load_model_file(checkpoint, use_ema=use_ema)
    return model, meta, str(checkpoint)


def _resolve_data(data, meta: dict, data_dir):
    """A Data object from a name, the checkpoint's dataset, or a Data-like object."""
    if data is None:
        data = meta.get("dataset")
        if not data:
            raise ValueError("the checkpoint names no dataset: pass --data NAME")
        data_dir = data_dir if data_dir is not None else meta.get("data_dir")
    if isinstance(data, str):
        from ..data import load_data
        return load_data(data, data_dir=data_dir)
    if hasattr(data, "info") and hasattr(data, "val"):
        return data
    raise ValueError(f"data must be a dataset name or a Data object, got {type(data).__name__}")


def load_data_for(checkpoint, data=None, data_dir: str | None = None):
    """The Data for a checkpoint: `data` (name or Data), else the dataset it was trained on.
    Reads the checkpoint first, so that a bad checkpoint fails before any data is loaded."""
    meta = {} if isinstance(checkpoint, torch.nn.Module) else read_model_file(checkpoint)[1]
    return _resolve_data(data, meta, data_dir)


def balanced_order(labels, seed: int = 0) -> np.ndarray:
    """Positions 0..len(labels)-1 in class-balanced order: one image of each class in turn
    (classes in index order), a seeded random image within each class; a class that runs out
    is skipped. The first N of it are as balanced as N allows, unlike the first N of a split,
    which in a sorted image folder are often all one class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    longest = max((len(q) for q in queues), default=0)
    turns = [q[r] for r in range(longest) for q in queues if r < len(q)]
    return np.asarray(turns, dtype=np.int64)


def _take(split, indices):
    """The images at `indices` of a split, as a split of the same kind."""
    indices = [int(i) for i in indices]
    if getattr(split, "samples", None) is not None:
        return replace(split, samples=tuple(split.samples[i] for i in indices))
    index = torch.as_tensor(indices, dtype=torch.long, device=split.labels.device)
    return replace(split, images=split.images[index], labels=split.labels[index])


def eval_images(data, model, indices, split: str = "val"):
    """Images `indices` of a split as the model sees them at evaluation: resized (and for image
    folders centre-cropped) to its resolution, its channel count, normalised. Returns (inputs
    float N,C,R,R, labels int64 N)."""
    from ..data import make_loader
    chosen = _take(getattr(data, split), indices)
    if not len(chosen):
        raise ValueError(f"the {split} split of {data.info.name} is empty")
    loader = make_loader(chosen, batch_size=min(len(chosen), 256),
                         resolution=model.spec.resolution, train=False, seed=0, epoch=0,
                         channels=model.in_chans, info=data.info)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _denormalize(inputs: torch.Tensor, info) -> np.ndarray:
    from ..data import denormalize
    images = denormalize(inputs.detach().cpu(), info).clamp(0, 1)
    return images.permute(0, 2, 3, 1).numpy().astype(np.float32)


def resolve_targets(target, labels: torch.Tensor, predictions: torch.Tensor,
                    class_names, num_classes: int) -> torch.Tensor:
    """"predicted", "true", a class index or a class name -> a class per image."""
    if isinstance(target, str):
        text = target.strip()
        if text.lower() == "predicted":
            return predictions.clone()
        if text.lower() == "true":
            return labels.clone()
        if text in tuple(class_names):
            return torch.full_like(labels, tuple(class_names).index(text))
        try:
            target = int(text)
        except ValueError:
            raise ValueError(f"target must be 'predicted', 'true', a class index or a class "
                             f"name, got {text!r}") from None
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ValueError(f"target must be 'predicted', 'true' or a class index, got {target!r}")
    if not 0 <= int(target) < num_classes:
        raise ValueError(f"target class {int(target)} is out of range: the model has "
                         f"{num_classes} classes (0..{num_classes - 1})")
    return torch.full_like(labels, int(target))


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
                 layer: LayerChoice, batch_size: int = 16) -> tuple[np.ndarray, torch.Tensor]:
    """pytorch-grad-cam's `method` on `layer` (the mean of its layers' maps when it fuses
    several), in batches: ((N, H, W) maps in [0, 1], logits)."""
    maps, logits = layer_maps(model, inputs, targets, method=method, layers=layer.layers,
                              batch_size=batch_size)
    if maps.shape[1] == 1:
        return maps[:, 0], logits
    return _normalise(maps.mean(1)), logits


@dataclass
class _Images:
    """The images a cam() call may use, as indices into the split in class-balanced order, with
    their boxes when there are some: it explains the first n, and auto measures the layers on
    the first max(n, AUTO_IMAGES)."""

    order: np.ndarray  # split indices, class-balanced
    n: int
    boxes: np.ndarray | None  # (len(order), 4) in the model's input pixels
    lost: int


def _choose_images(split, split_name: str, box_dict, resolution: int, images, seed: int
                   ) -> _Images:
    if box_dict is not None:
        pool, pool_boxes, lost = boxes_for_split(box_dict, split, split_name, resolution)
    else:
        pool, pool_boxes, lost = np.arange(len(split)), None, 0
    if not len(pool):
        raise ValueError(f"the {split_name} split is empty")
    order = balanced_order(split.labels.cpu().numpy()[pool], seed)
    n = len(order) if images is None else min(int(images), len(order))
    return _Images(pool[order], n, None if pool_boxes is None else pool_boxes[order], lost)


def _layer_for(model, layer, inputs, classes, method, batch_size, seed):
    """choose_layer on the measuring images; its warnings re-raised and returned as text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = slice(0, AUTO_IMAGES)
        choice = choose_layer(model, layer, inputs=inputs[sample],
                              classes=classes[sample].cpu().numpy(), method=method,
                              batch_size=batch_size, seed=seed)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    return choice, [str(w.message) for w in caught]


def _inputs_and_targets(model, data, indices, split, target, names):
    """The images at `indices` as the model sees them, on its device, their labels and the
    class each map explains."""
    inputs, labels = eval_images(data, model, indices, split)
    device = next(model.parameters()).device
    inputs, labels = inputs.to(device), labels.to(device)
    with torch.no_grad():
        predictions = torch.cat([model(inputs[lo:lo + 256]).argmax(-1)
                                 for lo in range(0, len(inputs), 256)])
    return inputs, labels, resolve_targets(target, labels, predictions, names, model.num_classes)


def _data_for_model(data, meta, data_dir, model):
    data = _resolve_data(data, meta, data_dir)
    if data.info.num_classes != model.num_classes:
        raise ValueError(f"{data.info.name} has {data.info.num_classes} classes but the model "
                         f"has {model.num_classes}: wrong --data for this checkpoint?")
    return data


def _check_args(method, images, split):
    method_class(method)
    if images is not None and (isinstance(images, bool) or int(images) < 1):
        raise ValueError(f"images must be >= 1 (or None for all), got {images}")
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")


def cam(checkpoint, data=None, *, images: int | None = 8, method: str = "gradcam",
        layer: str | int = "auto", target="predicted", data_dir: str | None = None,
        split: str = "val", score: bool = False, steps: int = DELETION_STEPS,
        out: str | Path | None = None, use_ema: bool = True, batch_size: int = 16,
        seed: int = 0, boxes=None) -> CamResult:
    """Class activation maps of a checkpoint on `images` class-balanced images of `data`.

    checkpoint: a model file, a run directory (its best, else last, model file) or a model.
    data: a dataset name (`digits`, `cifar10`, `imagefolder:PATH`, ...), a loaded
      `effscale.data.Data`, or None for the dataset the checkpoint was trained on.
    images: how many (None: the whole split, or every boxed image); one of each class in turn,
      a seeded random choice within each class (`balanced_order`).
    method: gradcam, gradcam++, layercam, eigencam or scorecam (pytorch-grad-cam).
    layer: "auto" (measured on these images and more of the split, up to AUTO_IMAGES: see
      select_layer; result.layer says why), a stage number 1..7 or "head".
    target: the class each map explains: "predicted", "true", a class index or name.
    score: also run the deletion test (result.deletion).
    boxes: a boxes file (JSON) or dict, image -> [x0, y0, x1, y1] in source pixels, keyed by
      path for image folders (`val/cat/1.jpg`, relative to the folder; or to the split, or
      absolute) and by index in the split for in-memory datasets. The images are drawn from
      the boxed ones, and result.localisation says how often each map's peak (and how much of
      its mass) falls in the box, mapped through the eval resize and centre crop.
    out: also write the grid figure there.
    seed: the choice of images within each class, and the random orders of the tests.
    EMA weights are used when the checkpoint has them (use_ema=False for the raw ones).
    """
    _check_args(method, images, split)
    box_dict = load_boxes(boxes) if boxes is not None else None  # fail before loading
    model, meta, source = _load(checkpoint, use_ema)
    auto = str(layer).strip().lower() == "auto"
    if not auto:
        parse_layer(layer, len(layer_sizes(model)))  # before any image is read
    data = _data_for_model(data, meta, data_dir, model)
    chosen = _choose_images(getattr(data, split), split, box_dict, model.spec.resolution,
                            images, seed)
    # auto measures the layers on the explained images and, when they are few, on more of the
    # same order: the choice must not hinge on a handful of images
    loaded = chosen.order[:max(chosen.n, AUTO_IMAGES * auto)]
    names = tuple(meta.get("class_names") or data.info.class_names)
    inputs, labels, classes = _inputs_and_targets(model, data, loaded, split, target, names)
    choice, texts = _layer_for(model, layer, inputs, classes, method, batch_size, seed)
    n = chosen.n
    inputs, labels, classes = inputs[:n], labels[:n], classes[:n]  # the explained ones
    maps, logits = compute_maps(model, inputs, classes, method=method, layer=choice,
                                batch_size=batch_size)
    probs = logits.softmax(-1)
    result = CamResult(
        maps=maps, images=_denormalize(inputs, data.info), labels=labels.cpu().numpy(),
        predictions=probs.argmax(-1).numpy(), confidences=probs.max(-1).values.numpy(),
        targets=classes.cpu().numpy(), layer=choice, method=method.strip().lower(),
        model_name=model.spec.name, class_names=names, checkpoint=source,
        weights=meta.get("weights", ""), warnings=texts, inputs=inputs,
        indices=chosen.order[:n], boxes_lost=chosen.lost,
        localisation=None if chosen.boxes is None else localise(maps, chosen.boxes[:n]))
    if score:
        result.deletion = deletion_score(model, inputs, maps, classes.cpu().numpy(),
                                         steps=steps, batch_size=max(batch_size, 64), seed=seed)
    if out is not None:
        result.figure(out)
    return result


def compare_figure(run_dirs, data=None, out_path="cams_compare.png", *, images: int | None = 6,
                   labels=None, data_dir: str | None = None, **cam_args) -> list[CamResult]:
    """The same images side by side for several models: rows = images, columns = models.

    run_dirs: run directories or model files (e.g. baseline, depth-, width-, resolution-only,
    compound). labels: column titles (default: each run's directory or file name). Models may
    differ in resolution: each sees the images at its own resolution and its map is shown
    upsampled to a common display size. With layer="auto" each model gets its own layer, and
    its column says which. cam_args: the rest of cam()'s options (method, layer, target,
    boxes, score, ...), the same for every model. Returns the CamResults, one per model.
    """
    from .figures import comparison_figure
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("compare_figure needs at least one run")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    method_class(cam_args.get("method", "gradcam"))
    data = load_data_for(run_dirs[0], data, data_dir)  # load once, reuse for every model
    results = [cam(run, data, images=images, data_dir=data_dir, **cam_args) for run in run_dirs]
    titles = list(labels) if labels is not None else [run_title(r) for r in run_dirs]
    comparison_figure(results, out_path, titles=titles)
    return results


def run_title(run) -> str:
    """A column title for a model, run directory or model file: its name."""
    if isinstance(run, torch.nn.Module):
        return run.spec.name
    path = Path(run)
    return path.name if path.is_dir() else path.stem
