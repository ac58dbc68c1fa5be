"""Model files: safetensors weights plus the JSON needed to rebuild the model.

A model file (`*.safetensors`) holds the model's state dict and, in its metadata, `effscale`:
a JSON object with at least the model name and the `create_model` keyword arguments, so that
`load_model_file` can rebuild it without any other file. EMA weights, when present, are stored
beside the raw weights under the prefix `ema.`. Nothing here can execute code on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_write
from .readback import check_model_meta
from ..model.names import model_spec
from ..model.net import EfficientNet, create_model

EMA_PREFIX = "ema."
MODEL_FILES = ("best.safetensors", "last.safetensors")


def model_meta(model: EfficientNet, **extra) -> dict:
    """What `create_model` needs to rebuild `model`, plus caller's extras (dataset, classes...)."""
    return dict(model=model.spec.name, num_classes=model.num_classes,
                stem_stride=model.stem_stride, in_chans=model.in_chans, bn=model.bn,
                drop_rate=model.drop_rate, drop_path_rate=model.spec.drop_path_rate,
                resolution=model.spec.resolution, **extra)


def save_model_file(path: str | Path, model: EfficientNet, meta: dict,
                    ema: torch.nn.Module | None = None) -> None:
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({EMA_PREFIX + k: v.detach().to("cpu", copy=True).contiguous()
                        for k, v in ema.state_dict().items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"effscale": json.dumps(meta)}))


def resolve_model_file(path: str | Path) -> Path:
    """A model file, or a run directory (its best, else last, model file)."""
    path = Path(path)
    if path.is_dir():
        for name in MODEL_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no {' or '.join(MODEL_FILES)}: not a run directory")
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    return path


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a model file; the metadata is checked (`check_model_meta`)
    before a tensor is read, and the classifier must have the class count it states."""
    path = resolve_model_file(path)
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not an effscale checkpoint (not safetensors: {exc})") from None
    if "effscale" not in metadata:
        raise ValueError(f"{path} is a safetensors file without effscale metadata; "
                         f"use effscale.load_weights for foreign weights")
    try:
        meta = json.loads(metadata["effscale"])
    except (ValueError, RecursionError):
        raise ValueError(f"{path}: metadata key 'effscale' is not valid JSON; the file was "
                         f"changed or is damaged") from None
    meta = check_model_meta(meta, path)
    # the classifier's shape against the metadata, so that a model edited into something
    # else (b0 -> b0@w=100, 10 -> 10**5 classes) is refused before it is allocated
    try:
        head = model_spec(meta["model"], stem_stride=meta.get("stem_stride", 2)).head_channels
    except ValueError as exc:
        raise ValueError(f"{path}: key 'effscale.model': {exc}") from None
    want, classifier = (meta["num_classes"], head), shapes.get("classifier.weight")
    if classifier is not None and classifier != want:
        raise ValueError(f"{path}: keys 'effscale.model' and 'effscale.num_classes' describe a "
                         f"{want[0]} x {want[1]} classifier, but the file's is "
                         f"{classifier[0]} x {classifier[1]}; the file was changed or is "
                         f"damaged")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not an effscale checkpoint (not safetensors: {exc})") from None
    return tensors, meta


def split_ema(tensors: dict) -> tuple[dict, dict]:
    """(raw weights, EMA weights) of a model file's tensors; EMA is {} when it has none."""
    ema = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    raw = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    return raw, ema


def load_model_file(path: str | Path, *, use_ema: bool = True,
                    map_location: str | torch.device = "cpu") -> tuple[EfficientNet, dict]:
    """Rebuild the model of a checkpoint (EMA weights when present and asked for), in eval mode."""
    tensors, meta = read_model_file(path)
    model = create_model(meta["model"], meta["num_classes"], drop_rate=meta.get("drop_rate"),
                         drop_path_rate=meta.get("drop_path_rate", 0.2), bn=meta.get("bn", "torch"),
                         stem_stride=meta.get("stem_stride", 2), in_chans=meta.get("in_chans", 3))
    raw, ema = split_ema(tensors)
    chosen = ema if (use_ema and ema) else raw
    try:
        model.load_state_dict(chosen)
    except RuntimeError as exc:  # torch lists every key and shape over many lines
        first = str(exc).splitlines()[1:2] or str(exc).splitlines()[:1]
        raise ValueError(f"{resolve_model_file(path)}: the weights do not fit the model its "
                         f"metadata describes ({meta['model']}): {first[0].strip()}") from None
    meta = dict(meta, weights="ema" if chosen is ema else "raw")
    return model.to(map_location).eval(), meta
