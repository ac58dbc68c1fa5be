"""Class activation maps for trained effscale models: the public entry points `cam()` and
`compare_figure`, and their result (`CamResult`).

The CAM methods themselves come from pytorch-grad-cam (`methods.py`, driven by `gradcam.py`).
effscale's part is what users of every EfficientNet implementation get wrong: the target layer,
chosen by measurement (`layers.py`: `choose_layer` / `select_layer`), the evaluation images at
the model's own resolution and normalisation and balanced over the classes (here), EMA weights,
batching, faithfulness scores (`faithfulness.py`: `deletion_curves`, `insertion_curves`),
localisation against annotated boxes mapped through the eval transform (`boxes.py`: `map_box`,
`localise`) and the figures (`figures.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..io.checkpoint import load_model_file, read_model_file
from .boxes import Localisation, boxes_for_split, load_boxes, localise, map_box
from .faithfulness import DELETION_STEPS, DeletionScore, deletion_score
from .gradcam import compute_maps
from .layers import AUTO_IMAGES, LayerChoice, choose_layer, layer_sizes, parse_layer
from .methods import method_class

# The entry points, their results, and the names docs/CONTRACTS.md documents as this module's
# (LayerChoice, load_boxes, map_box, localise, Localisation live in layers.py and boxes.py).
__all__ = ["CamResult", "LayerChoice", "Localisation", "balanced_order", "cam", "compare_figure",
           "eval_images", "load_boxes", "load_data_for", "localise", "map_box", "resolve_targets",
           "run_title"]


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


def _model_and_meta(checkpoint, use_ema: bool):
    """(model in eval mode, its file's metadata, a name for it) of a model file or a model."""
    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.eval(), {}, getattr(checkpoint.spec, "name", "model")
    model, meta = load_model_file(checkpoint, use_ema=use_ema)
    return model, meta, str(checkpoint)


def _resolve_data(data, meta: dict, data_dir):
    """A Data object from a name, Python datasets, the checkpoint's dataset, or a Data-like
    object."""
    if data is None:
        data = meta.get("dataset")
        if not data:
            raise ValueError("the checkpoint names no dataset: pass --data NAME")
        data_dir = data_dir if data_dir is not None else meta.get("data_dir")
    if hasattr(data, "info") and hasattr(data, "val"):
        return data
    from ..data.objects import is_datasets
    if isinstance(data, str) or is_datasets(data):  # a name, or Python datasets
        from ..data import load_data
        # a split-off validation set is the run's own: its seed and fraction, as evaluate does
        return load_data(data, data_dir=data_dir, seed=meta.get("split_seed", 0),
                         val_fraction=meta.get("val_fraction", 0.1))
    raise ValueError(f"data must be a dataset name, a Data object, a map-style Dataset or a "
                     f"(train, val) pair of them, got {type(data).__name__}")


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


def _split_subset(split, indices):
    """The images at `indices` of a split, as a split of the same kind."""
    indices = [int(i) for i in indices]
    if hasattr(split, "subset"):  # a Python dataset's split
        return split.subset(indices)
    if getattr(split, "samples", None) is not None:
        return replace(split, samples=tuple(split.samples[i] for i in indices))
    index = torch.as_tensor(indices, dtype=torch.long, device=split.labels.device)
    return replace(split, images=split.images[index], labels=split.labels[index])


def eval_images(data, model, indices, split: str = "val"):
    """Images `indices` of a split as the model sees them at evaluation: resized (and for image
    folders centre-cropped) to its resolution, its channel count, normalised. Returns (inputs
    float N,C,R,R, labels int64 N)."""
    from ..data import make_loader
    whole = getattr(data, split)
    if hasattr(whole, "shards"):  # a stream has no random access: one pass, keep the chosen
        return _streamed_images(whole, model, indices, data.info)
    chosen = _split_subset(whole, indices)
    if not len(chosen):
        raise ValueError(f"the {split} split of {data.info.name} is empty")
    loader = make_loader(chosen, batch_size=min(len(chosen), 256),
                         resolution=model.spec.resolution, train=False, seed=0, epoch=0,
                         channels=model.in_chans, info=data.info)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _streamed_images(split, model, indices, info):
    """eval_images of webdataset shards: the split read once in its index order (every image
    decoded, the chosen ones kept), returned in the order of `indices`."""
    from ..data import make_loader
    wanted = {int(i): k for k, i in enumerate(indices)}
    xs, ys, found, start = [None] * len(wanted), [None] * len(wanted), 0, 0
    for x, y in make_loader(split, batch_size=256, resolution=model.spec.resolution,
                            train=False, seed=0, epoch=0, channels=model.in_chans, info=info):
        for row in range(len(y)):
            if start + row in wanted:
                xs[wanted[start + row]], ys[wanted[start + row]] = x[row], y[row]
                found += 1
        start += len(y)
        if found == len(wanted):
            break
    return torch.stack(xs), torch.stack(ys)


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


@dataclass
class _CamImages:
    """The images a cam() call may use, as indices into the split in class-balanced order, with
    their boxes when there are some: it explains the first n, and auto measures the layers on
    the first max(n, AUTO_IMAGES)."""

    order: np.ndarray  # split indices, class-balanced
    n: int
    boxes: np.ndarray | None  # (len(order), 4) in the model's input pixels
    lost: int


def _choose_images(split, split_name: str, box_dict, resolution: int, images, seed: int
                   ) -> _CamImages:
    if box_dict is not None:
        pool, pool_boxes, lost = boxes_for_split(box_dict, split, split_name, resolution)
    else:
        pool, pool_boxes, lost = np.arange(len(split)), None, 0
    if not len(pool):
        raise ValueError(f"the {split_name} split is empty")
    order = balanced_order(split.labels.cpu().numpy()[pool], seed)
    n = len(order) if images is None else min(int(images), len(order))
    return _CamImages(pool[order], n, None if pool_boxes is None else pool_boxes[order], lost)


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
    data: a dataset name (`digits`, `imagefolder:PATH`, ...), an `effscale.data.Data`, Python
      datasets (as `train` takes them), or None for the dataset the checkpoint trained on.
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
    model, meta, source = _model_and_meta(checkpoint, use_ema)
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
