"""Class activation maps for trained effscale models: which layer, which images, how faithful.

The CAM methods themselves come from pytorch-grad-cam (`METHODS`). effscale's part is what users
of every EfficientNet implementation get wrong: the target layer (a 1x1 final map gives a
constant, meaningless map, so `choose_layer` reads the map sizes off the spec and warns), the
evaluation images at the model's own resolution and normalisation, EMA weights, batching, a
faithfulness score (`deletion_curves`) and the figures (`camfigures.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..io.checkpoint import load_model_file, read_model_file
from ..model.spec import small_map_cures, stage_resolutions

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM,
           "eigencam": EigenCAM, "scorecam": ScoreCAM}
# A map smaller than this cannot say *where*: 1x1 is constant, 2x2 and 3x3 are quadrants.
MIN_MAP_SIZE = 4
# Deletion test: fraction of pixels removed per step is 1 / DELETION_STEPS.
DELETION_STEPS = 10


# ---------------------------------------------------------------------------------------------
# Layer choice


@dataclass(frozen=True)
class LayerChoice:
    index: int  # 0..6 = model.stages[index], 7 = model.head
    name: str  # "stage 5" or "head", as a user types it (`--layer 5`, `--layer head`)
    module: str  # "stages.4" or "head": the attribute path in the model
    size: int  # side of its feature map at the model's resolution
    reason: str  # why it was chosen, one line

    def __str__(self) -> str:
        return f"{self.name} ({self.size}x{self.size} map)"


def layer_sizes(model, resolution: int | None = None) -> list[int]:
    """Feature-map side of the 7 stages and the head (8 entries), from the spec alone."""
    sizes = stage_resolutions(model.spec, resolution or model.spec.resolution,
                              model.stem_stride)[1:]
    return sizes + [sizes[-1]]  # the head is a 1x1 conv: same size as stage 7


def _layer_name(index: int, count: int) -> str:
    return "head" if index == count - 1 else f"stage {index + 1}"


def _module(model, index: int):
    return model.head if index == len(model.stages) else model.stages[index]


def small_map_advice(model, resolution: int | None = None) -> str:
    """The two cures for a too-small final map, with the numbers for this model."""
    res = resolution or model.spec.resolution
    final = layer_sizes(model, res)[-1]
    return (f"the final feature map of {model.spec.name} is {final}x{final} at {res}x{res} input, "
            f"too small for a CAM to localise; "
            + small_map_cures(model.spec, res, model.stem_stride, MIN_MAP_SIZE))


def choose_layer(model, layer: str | int = "auto", resolution: int | None = None) -> LayerChoice:
    """`auto`: the deepest of the 7 stages and the head whose map is >= MIN_MAP_SIZE square.

    Deeper maps are more class-specific; too small a map cannot localise. When the final map is
    below MIN_MAP_SIZE, auto falls back to an earlier stage and warns (UserWarning) with the
    cures. `layer` may be a stage number 1..7 or "head" (also warned about when too small).
    """
    sizes = layer_sizes(model, resolution)
    count = len(sizes)
    if isinstance(layer, str) and layer.strip().lower() == "auto":
        big = [i for i, s in enumerate(sizes) if s >= MIN_MAP_SIZE]
        if big and big[-1] == count - 1:
            index, reason = count - 1, "auto: the final map is large enough"
        else:
            # no map is big enough: take the largest, deepest one
            index = big[-1] if big else max(range(count), key=lambda i: (sizes[i], -i))
            reason = (f"auto: deepest map >= {MIN_MAP_SIZE}x{MIN_MAP_SIZE}" if big else
                      "auto: no map is large enough; the largest")
            warnings.warn(f"{small_map_advice(model, resolution)}. Using "
                          f"{_layer_name(index, count)} ({sizes[index]}x{sizes[index]}) instead, "
                          f"which is less class-specific.", UserWarning, stacklevel=2)
        return LayerChoice(index, _layer_name(index, count), _module_path(index, count),
                           sizes[index], reason)
    index = _parse_layer(layer, count)
    if sizes[index] < MIN_MAP_SIZE:
        warnings.warn(f"{_layer_name(index, count)} has a {sizes[index]}x{sizes[index]} map at "
                      f"{resolution or model.spec.resolution} px: its CAM cannot localise "
                      f"(use --layer auto, or see the cures: {small_map_advice(model, resolution)})",
                      UserWarning, stacklevel=2)
    return LayerChoice(index, _layer_name(index, count), _module_path(index, count),
                       sizes[index], "asked for")


def _module_path(index: int, count: int) -> str:
    return "head" if index == count - 1 else f"stages.{index}"


def _parse_layer(layer: str | int, count: int) -> int:
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


@torch.no_grad()
def deletion_curves(model, inputs: torch.Tensor, maps: np.ndarray, classes, *,
                    steps: int = DELETION_STEPS, baseline: float = 0.0, batch_size: int = 64,
                    seed: int = 0) -> np.ndarray:
    """Probability of `classes[i]` as the top k/steps of image i's pixels (by `maps[i]`) are
    replaced by `baseline`, k = 0..steps: an (N, steps + 1) array.

    `inputs` are normalised, so baseline 0 is the dataset mean colour: a removed pixel carries no
    information without being an out-of-distribution black. All channels of a pixel go
    together. Ties in a map (e.g. the zeros ReLU leaves) are broken in a seeded random order,
    not in raster order, which would favour the top of the image.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n, _, h, w = inputs.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be {(n, h, w)} to match the inputs, got {maps.shape}")
    pixels = h * w
    tie = np.random.default_rng(seed).random((n, pixels))
    order = np.lexsort((tie, -maps.reshape(n, pixels).astype(np.float64)), axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(pixels)[None].repeat(n, 0), axis=-1)
    rank = torch.from_numpy(rank.reshape(n, 1, h, w)).to(inputs.device)
    classes = torch.as_tensor(np.asarray(classes), dtype=torch.long, device=inputs.device)
    curves = torch.empty(n, steps + 1)
    for k in range(steps + 1):
        removed = int(round(k / steps * pixels))
        for lo in range(0, n, batch_size):
            x = inputs[lo:lo + batch_size]
            x = torch.where(rank[lo:lo + batch_size] < removed, torch.full_like(x, baseline), x)
            probs = model(x).float().softmax(-1)
            curves[lo:lo + batch_size, k] = probs.gather(1, classes[lo:lo + batch_size, None])[:, 0]
    return curves.cpu().numpy()


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

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels

    def class_name(self, index: int) -> str:
        index = int(index)
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def figure(self, out_path: str | Path, **kwargs) -> Path:
        """The grid figure (see camfigures.grid_figure)."""
        from .figures import grid_figure
        return grid_figure(self, out_path, **kwargs)

    def rows(self) -> list[dict]:
        """One row per image, for effscale.io.table.render."""
        return [{"image": i, "true": self.class_name(t), "predicted": self.class_name(p),
                 "confidence": round(float(c), 4), "correct": bool(ok),
                 "target": self.class_name(g), "map_peak": _peak_text(m)}
                for i, (t, p, c, ok, g, m) in enumerate(zip(
                    self.labels, self.predictions, self.confidences, self.correct,
                    self.targets, self.maps))]


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


def first_images(data, model, n: int, split: str = "val", seed: int = 0):
    """The first n images of a split, as the model sees them at evaluation: resized to its
    resolution, its channel count, normalised (same images for every model, whatever its
    resolution). Returns (inputs float N,C,R,R, labels int64 N)."""
    from ..data import make_loader
    if n < 1:
        raise ValueError(f"images must be >= 1, got {n}")
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    loader = make_loader(getattr(data, split), batch_size=min(n, 256),
                         resolution=model.spec.resolution, train=False, seed=seed, epoch=0,
                         channels=model.in_chans, info=data.info)
    xs, ys, got = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        got += len(y)
        if got >= n:
            break
    if not xs:
        raise ValueError(f"the {split} split of {data.info.name} is empty")
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


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


def compute_maps(model, inputs: torch.Tensor, targets, *, method: str = "gradcam",
                 layer: LayerChoice, batch_size: int = 16) -> tuple[np.ndarray, torch.Tensor]:
    """pytorch-grad-cam's `method` on `layer`, in batches: ((N, H, W) maps in [0, 1], logits)."""
    cam_class = _method(method)
    engine = cam_class(model, [_module(model, layer.index)])
    if method == "scorecam":
        engine.batch_size = batch_size  # its forward passes per channel, batched
    maps, logits = [], []
    try:
        with torch.enable_grad():
            for lo in range(0, len(inputs), batch_size):
                x = inputs[lo:lo + batch_size]
                chosen = [ClassifierOutputTarget(int(c)) for c in targets[lo:lo + batch_size]]
                maps.append(engine(input_tensor=x, targets=chosen))
                logits.append(engine.outputs.detach().float().cpu())
    finally:
        # not `with engine`: its __exit__ swallows IndexError, hiding real bugs
        engine.activations_and_grads.release()
    return np.concatenate(maps).astype(np.float32), torch.cat(logits)


def _method(method: str):
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[key]


def cam(checkpoint, data=None, *, images: int = 8, method: str = "gradcam",
        layer: str | int = "auto", target="predicted", data_dir: str | None = None,
        split: str = "val", score: bool = False, steps: int = DELETION_STEPS,
        out: str | Path | None = None, use_ema: bool = True, batch_size: int = 16,
        seed: int = 0) -> CamResult:
    """Class activation maps of a checkpoint on the first `images` images of `data`.

    checkpoint: a model file, a run directory (its best, else last, model file) or a model.
    data: a dataset name (`digits`, `cifar10`, `imagefolder:PATH`, ...), a loaded
      `effscale.data.Data`, or None for the dataset the checkpoint was trained on.
    method: gradcam, gradcam++, layercam, eigencam or scorecam (pytorch-grad-cam).
    layer: "auto" (deepest map >= 4x4, see choose_layer), a stage number 1..7 or "head".
    target: the class each map explains: "predicted", "true", a class index or name.
    score: also run the deletion test (result.deletion).
    out: also write the grid figure there.
    EMA weights are used when the checkpoint has them (use_ema=False for the raw ones).
    """
    _method(method)  # fail on a bad method before loading anything
    model, meta, source = _load(checkpoint, use_ema)
    data = _resolve_data(data, meta, data_dir)
    info = data.info
    if info.num_classes != model.num_classes:
        raise ValueError(f"{info.name} has {info.num_classes} classes but the model has "
                         f"{model.num_classes}: wrong --data for this checkpoint?")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = choose_layer(model, layer)
    for w in caught:  # re-raise for the caller, and keep the text in the result
        warnings.warn(w.message, w.category, stacklevel=2)
    inputs, labels = first_images(data, model, images, split, seed)
    device = next(model.parameters()).device
    inputs, labels = inputs.to(device), labels.to(device)
    with torch.no_grad():
        predictions = model(inputs).argmax(-1)
    names = tuple(meta.get("class_names") or info.class_names)
    classes = resolve_targets(target, labels, predictions, names, model.num_classes)
    maps, logits = compute_maps(model, inputs, classes, method=method, layer=choice,
                                batch_size=batch_size)
    probs = logits.softmax(-1)
    result = CamResult(
        maps=maps, images=_denormalize(inputs, info), labels=labels.cpu().numpy(),
        predictions=probs.argmax(-1).numpy(), confidences=probs.max(-1).values.numpy(),
        targets=classes.cpu().numpy(), layer=choice, method=str(method).strip().lower(),
        model_name=model.spec.name, class_names=names, checkpoint=source,
        weights=meta.get("weights", ""), warnings=[str(w.message) for w in caught],
        inputs=inputs)
    if score:
        result.deletion = deletion_score(model, inputs, maps, classes.cpu().numpy(),
                                         steps=steps, batch_size=max(batch_size, 64), seed=seed)
    if out is not None:
        result.figure(out)
    return result


def compare_figure(run_dirs, data=None, out_path="cams_compare.png", *, images: int = 6,
                   method: str = "gradcam", labels=None, data_dir: str | None = None,
                   layer: str | int = "auto", target="predicted",
                   use_ema: bool = True) -> list[CamResult]:
    """The same images side by side for several models: rows = images, columns = models.

    run_dirs: run directories or model files (e.g. baseline, depth-, width-, resolution-only,
    compound). labels: column titles (default: each run's directory or file name). Models may
    differ in resolution: each sees the images at its own resolution and its map is shown
    upsampled to a common display size. Returns the CamResults, one per model.
    """
    from .figures import comparison_figure
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("compare_figure needs at least one run")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    _method(method)
    data = load_data_for(run_dirs[0], data, data_dir)  # load once, reuse for every model
    results = []
    for run in run_dirs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kept in result.warnings
            results.append(cam(run, data, images=images, method=method, layer=layer,
                               target=target, use_ema=use_ema))
    titles = list(labels) if labels is not None else [run_title(r) for r in run_dirs]
    comparison_figure(results, out_path, titles=titles)
    return results


def run_title(run) -> str:
    """A column title for a model, run directory or model file: its name."""
    if isinstance(run, torch.nn.Module):
        return run.spec.name
    path = Path(run)
    return path.name if path.is_dir() else path.stem
