"""Which layer a CAM is computed on: the candidate layers (every map large enough to say
*where*), a layer asked for by name, and `--layer auto`'s choice by measurement
(`choose_layer` / `select_layer`: the mean of the AUTO_FUSE candidate layers whose maps pass
the peak test best on the images being explained, not the deepest map of some size).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..model.spec import small_map_cures, stage_resolutions
from .faithfulness import peak_window_scores
from .gradcam import layer_maps

# A map smaller than this cannot say *where*: 1x1 is constant, 2x2 and 3x3 are quadrants.
MIN_MAP_SIZE = 4
# Layer choice: the candidates are measured on this many images (the explained ones first,
# then more of the same split, class-balanced): the ranking must not hinge on a handful.
AUTO_IMAGES = 128
# Layer choice: auto averages the maps of this many best-ranked layers. The peak test ranks
# the right neighbourhood of layers reliably but not the best of two neighbours (their scores
# differ by ~0.01-0.03); the mean of the two localises within 5 points of the best single
# stage where either alone can miss it by 10 (BENCHMARKS.md, "Which layer finds the object").
AUTO_FUSE = 2


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
