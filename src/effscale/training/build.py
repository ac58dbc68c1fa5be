"""The model a run trains: built from the config, maybe from pretrained weights (an effscale
model file, or torchvision / timm / lukemelas weights through `effscale.load_weights`)."""

from __future__ import annotations

from torch import nn

from ..io import checkpoint as ckpt
from ..model.net import create_model
from ..model.spec import final_map_size, small_map_cures
from .config import Config


def build_model(cfg: Config, num_classes: int, data_in_chans: int, log) -> nn.Module:
    """The config's model for `num_classes`, with the pretrained weights if any. Its input
    channels: the config's, else the pretrained weights', else the data's (a loader repeats
    a 1-channel dataset to 3 for a 3-channel model)."""
    in_chans, bn = data_in_chans, "torch"
    if cfg.pretrained:
        in_chans, bn = pretrained_conventions(cfg.pretrained)
    model = create_model(cfg.model, num_classes, drop_path_rate=cfg.drop_path_rate,
                         stem_stride=cfg.stem_stride, in_chans=cfg.in_chans or in_chans, bn=bn)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained, num_classes, log)
    elif cfg.zero_init:
        model.zero_init()
    return model


def pretrained_conventions(path: str) -> tuple[int, str]:
    """(in_chans, bn) of a model that takes the pretrained weights: an effscale model file's,
    else what the weights' format and stem conv say (ImageNet weights: 3 channels; BatchNorm
    eps 1e-3, bn="tf", for weights ported from TF such as lukemelas')."""
    try:
        _, meta = ckpt.read_model_file(path)
    except ValueError:
        from ..io.weights import weights_info
        info = weights_info(path)
        return info.in_chans, info.bn or "torch"
    return int(meta.get("in_chans", 3)), meta.get("bn", "torch")


def load_pretrained(model: nn.Module, path: str, num_classes: int, log) -> None:
    """Weights from an effscale model file (EMA if present) or, through effscale.load_weights,
    any format it understands. The classifier is replaced when the class count differs."""
    try:
        tensors, meta = ckpt.read_model_file(path)
    except ValueError:
        source_classes = _load_foreign(model, path, num_classes)
    else:
        source_classes = int(meta["num_classes"])
        _load_effscale(model, path, tensors, keep_classifier=source_classes == num_classes)
    if source_classes != num_classes:
        model.reset_classifier(num_classes)
    log(f"fine-tuning from {path} ({source_classes or 'other'} -> {num_classes} classes)")


def _load_effscale(model: nn.Module, path: str, tensors: dict, keep_classifier: bool) -> None:
    raw, ema = ckpt.split_ema(tensors)
    state = ema or raw
    if not keep_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match {model.spec.name}: "
                         f"{len(missing)} missing, {len(unexpected)} unexpected tensors "
                         f"(e.g. {(missing + unexpected)[0]})")


def _load_foreign(model: nn.Module, path: str, num_classes: int) -> int | None:
    """Loads weights of another format; returns their class count when their classifier was
    kept (it has the model's), else None (the model's own classifier is kept)."""
    from ..io.weights import load_weights
    try:
        load_weights(model, path)
        return num_classes
    except ValueError:  # most often 1000 ImageNet classes; anything else fails again here
        load_weights(model, path, ignore_classifier=True)
        return None


def final_map_warning(model: nn.Module) -> str | None:
    """One line when the model's final feature map is 1x1 (e.g. B0 at 32 px): the last stages'
    depthwise convs then see only zero padding around one pixel, and pooling has one value."""
    spec, res = model.spec, model.spec.resolution
    if final_map_size(spec, res, model.stem_stride) > 1:
        return None
    return (f"warning: the final feature map of {spec.name} is 1x1 at {res}x{res} input, so its "
            f"last stages see no spatial context; " + small_map_cures(spec, res, model.stem_stride, 2))
