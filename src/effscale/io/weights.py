"""Weights trained elsewhere, loaded into an effscale `EfficientNet`.

Sources: torchvision `efficientnet_bX`, timm `efficientnet_bX`, lukemelas EfficientNet-PyTorch
and effscale's own state dicts, given as a dict or as a file (safetensors, or .pth/.pt read
with `torch.load(weights_only=True)`). The format is recognised from key names, and every
source key is translated by an explicit per-format rule onto our module names (stem,
stages.i.j.{expand,dw,se,project}, head, classifier), so key order never matters (safetensors
files are sorted by key).

Three things a state dict does not say, and how they are handled:
- BatchNorm eps. torchvision B5-B7 and lukemelas (all ported from TF) use eps 1e-3, the others
  1e-5. The loader knows each source's convention and refuses a model built with the other one
  (build it with `create_model(name, bn="tf")` for eps 1e-3): the logits would silently differ.
- Padding. timm's `tf_efficientnet_bX` pads TF-"same" (asymmetric at stride 2), which our model
  does not implement, yet its keys and shapes equal `efficientnet_bX`'s. It is refused when the
  caller says so (`source="tf_efficientnet_b0"`), or a file name or a timm checkpoint's `arch`
  says so; a bare state dict cannot reveal it. lukemelas models pad TF-"same" too; there is no
  other lukemelas layout, so they load with a warning: our logits equal theirs only at input
  sizes where "same" padding is symmetric (odd sizes at every stride-2 layer: 33, 65, 129, 225...)
  and lukemelas was built for that size (its padding is fixed by `image_size`).
- num_batches_tracked. Some exports drop it; the model's own counters are kept then.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..model.names import model_spec
from ..model.spec import B0_STAGES, FAMILY

EXAMPLES = 3  # mismatching keys quoted per kind in an error message
TF_EPS, TORCH_EPS = 1e-3, 1e-5


@dataclass(frozen=True)
class _Layout:
    """What a translation rule may consult: the source's module paths (every dotted prefix)
    and the target model's block positions, never the order of keys."""
    prefixes: frozenset[str]
    num_stages: int
    block_positions: tuple[tuple[int, int], ...]  # global block index -> (stage, index in stage)


# ---- per-format rules: source module path -> our module path (None: no rule) ----------------

def _effscale(module: str, layout: _Layout) -> str | None:
    return module


TV_TOP_CONV = {"0": "conv", "1": "bn"}
TV_SE = {"fc1": "reduce", "fc2": "expand"}
TV_BLOCK = re.compile(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(\w+)")
TV_TOP = re.compile(r"features\.(\d+)\.([01])")


def _torchvision(module: str, layout: _Layout) -> str | None:
    """features.0 = stem, features.1-7 = stages, features.8 = head, classifier.1 = the FC.

    A block is a Sequential of [expand], dw, se, project; the expand conv exists only when the
    expand ratio is not 1, so the index of each part depends on whether the block has 4 parts.
    """
    if module == "classifier.1":
        return "classifier"
    top = TV_TOP.fullmatch(module)
    if top:
        where = {"0": "stem", str(layout.num_stages + 1): "head"}.get(top[1])
        return f"{where}.{TV_TOP_CONV[top[2]]}" if where else None
    block = TV_BLOCK.fullmatch(module)
    if not block:
        return None
    stage, index, part, leaf = int(block[1]) - 1, block[2], int(block[3]), block[4]
    has_expand = f"features.{block[1]}.{index}.block.3" in layout.prefixes
    parts = ("expand", "dw", "se", "project") if has_expand else ("dw", "se", "project")
    if part >= len(parts):
        return None
    leaf = TV_SE.get(leaf) if parts[part] == "se" else TV_TOP_CONV.get(leaf)
    return f"stages.{stage}.{index}.{parts[part]}.{leaf}" if leaf else None


TIMM_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv",
            "bn2": "head.bn", "classifier": "classifier"}
TIMM_SE = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}
# InvertedResidual (expand ratio > 1) and DepthwiseSeparableConv (ratio 1) reuse the names
# conv_pw / bn1 / bn2 for different layers, so the block type decides: only the former has
# conv_pwl.
TIMM_INVERTED = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv",
                 "bn2": "dw.bn", "conv_pwl": "project.conv", "bn3": "project.bn", **TIMM_SE}
TIMM_SEPARABLE = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "project.conv",
                  "bn2": "project.bn", **TIMM_SE}
TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)")


def _timm(module: str, layout: _Layout) -> str | None:
    if module in TIMM_TOP:
        return TIMM_TOP[module]
    block = TIMM_BLOCK.fullmatch(module)
    if not block:
        return None
    stage, index, part = block.groups()
    inverted = f"blocks.{stage}.{index}.conv_pwl" in layout.prefixes
    ours = (TIMM_INVERTED if inverted else TIMM_SEPARABLE).get(part)
    return f"stages.{stage}.{index}.{ours}" if ours else None


LUKE_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv",
            "_bn1": "head.bn", "_fc": "classifier"}
LUKE_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv",
              "_bn1": "dw.bn", "_se_reduce": "se.reduce", "_se_expand": "se.expand",
              "_project_conv": "project.conv", "_bn2": "project.bn"}
LUKE_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)")


def _lukemelas(module: str, layout: _Layout) -> str | None:
    """lukemelas numbers blocks globally (_blocks.0 ... _blocks.N-1); stages are not in the
    keys, so the target model's per-stage repeats place them (a block count that differs is
    reported as a wrong variant before any of this matters)."""
    if module in LUKE_TOP:
        return LUKE_TOP[module]
    block = LUKE_BLOCK.fullmatch(module)
    if not block or int(block[1]) >= len(layout.block_positions) or block[2] not in LUKE_PARTS:
        return None
    stage, index = layout.block_positions[int(block[1])]
    return f"stages.{stage}.{index}.{LUKE_PARTS[block[2]]}"


@dataclass(frozen=True)
class _Format:
    name: str
    marker: str           # a key that only this format has
    block_id: re.Pattern  # matches a key inside a block; groups identify the block
    translate: Callable[[str, _Layout], str | None]
    tf_eps: Callable[[str | None], bool | None]  # variant -> uses eps 1e-3? (None: unknown)


FORMATS = (
    _Format("effscale", "stem.conv.weight", re.compile(r"stages\.(\d+)\.(\d+)\."),
            _effscale, lambda variant: None),
    _Format("torchvision", "features.0.0.weight",
            re.compile(r"features\.(\d+)\.(\d+)\.block\."), _torchvision,
            lambda variant: variant in ("b5", "b6", "b7")),  # ported from TF, see module doc
    _Format("timm", "conv_stem.weight", re.compile(r"blocks\.(\d+)\.(\d+)\."), _timm,
            lambda variant: False),
    _Format("lukemelas", "_conv_stem.weight", re.compile(r"_blocks\.(\d+)\."), _lukemelas,
            lambda variant: True),
)
SOURCES = tuple(f.name for f in FORMATS)
TF_PADDED = ("tf_efficientnet", "tf-efficientnet", "timm-tf")


# ---- reading -------------------------------------------------------------------------------

def _read_file(path: Path) -> tuple[dict, str | None]:
    """(state dict, arch hint) of a safetensors or torch.save file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path)), None
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors have no common base class
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a state dict file torch.load(weights_only=True) "
                         f"can read ({first})") from None
    return _unwrap(obj, str(path))


def _unwrap(obj, where: str) -> tuple[dict, str | None]:
    """A state dict, or a training checkpoint holding one (timm's train.py stores `arch`)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} holds a {type(obj).__name__}, not a state dict")
    arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key]), arch
    return dict(obj), arch


def _strip_wrappers(state: dict) -> dict:
    """Drop prefixes that DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') add."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _check_tensors(state: dict, where: str) -> None:
    if not state:
        raise ValueError(f"{where} is an empty state dict")
    bad = [(k, type(v).__name__) for k, v in state.items()
           if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        examples = ", ".join(f"{k!r}: {t}" for k, t in bad[:EXAMPLES])
        raise ValueError(f"{where} is not a state dict: {len(bad)} entries are not "
                         f"name -> tensor, e.g. {examples}")


def _detect(state: dict, source: str | None, where: str) -> _Format:
    found = [f for f in FORMATS if f.marker in state]
    if source is not None:
        named = [f for f in FORMATS if f.name == source]
        if not named:
            raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)} "
                             f"(or name a tf_efficientnet_bX to be told why it cannot load)")
        if found and found != named:
            raise ValueError(f"source={source!r} but the keys of {where} are "
                             f"{found[0].name}'s (e.g. {found[0].marker})")
        return named[0]
    if len(found) != 1:
        examples = ", ".join(sorted(state)[:EXAMPLES])
        raise ValueError(f"{where} is not a recognised EfficientNet state dict (keys e.g. "
                         f"{examples}); expected torchvision, timm (efficientnet_bX), lukemelas "
                         f"or effscale names")
    return found[0]


def _refuse_tf_padding(hints: list[str]) -> None:
    for hint in hints:
        if any(tag in hint.lower() for tag in TF_PADDED):
            raise ValueError(
                f"{hint!r} is a TF-ported timm model (tf_efficientnet_*): it pads TF-'same' "
                f"(asymmetric at stride 2), which effscale's model does not implement, so its "
                f"weights would give different outputs here; use torchvision's or timm's "
                f"efficientnet_bX weights instead")


# ---- translating and checking ---------------------------------------------------------------

def _prefixes(state: dict) -> frozenset[str]:
    prefixes = set()
    for key in state:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(prefixes)


def _layout(state: dict, model: nn.Module) -> _Layout:
    positions = tuple((s, j) for s, stage in enumerate(model.stages) for j in range(len(stage)))
    return _Layout(_prefixes(state), len(model.stages), positions)


def _translate(state: dict, fmt: _Format, layout: _Layout) -> tuple[dict, dict, list]:
    """-> (our key -> tensor, our key -> source key, source keys no rule covers)."""
    tensors, origin, unknown = {}, {}, []
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        ours = fmt.translate(module, layout) if module else None
        if ours is None:
            unknown.append(key)
            continue
        tensors[f"{ours}.{leaf}"] = value
        origin[f"{ours}.{leaf}"] = key
    return tensors, origin, unknown


def _shape_of(state: dict, fmt: _Format, tensors: dict) -> tuple[int, int | None]:
    """(number of blocks, head channels) of a source, for naming the variant it looks like."""
    blocks = {m.groups() for k in state if (m := fmt.block_id.match(k))}
    head = tensors.get("head.conv.weight")
    return len(blocks), None if head is None else head.shape[0]


def _variant_of(num_blocks: int, head: int | None) -> str | None:
    for base in FAMILY:
        spec = model_spec(base)
        if spec.num_blocks == num_blocks and spec.head_channels == head:
            return base
    return None


def _describe(num_blocks: int, head: int | None) -> str:
    return f"{num_blocks} blocks, head {head} channels"


def _examples(keys: list[str], show: Callable[[str], str]) -> str:
    return ", ".join(show(k) for k in sorted(keys)[:EXAMPLES])


def _mismatch_message(fmt, model, tensors, origin, unknown, source_shape,
                      model_keeps: Callable[[str], bool]) -> str | None:
    expected = model.state_dict()
    wrong = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in tensors and not model_keeps(k)]
    extra = unknown + [origin[k] for k in tensors if k not in expected]
    if not (wrong or missing or extra):
        return None
    ours = (model.spec.num_blocks, model.spec.head_channels)
    notes = []
    if source_shape != ours:
        looks = _variant_of(*source_shape)
        notes.append(f"the weights are {'a ' + looks if looks else 'another variant'} "
                     f"({_describe(*source_shape)}), the model {model.spec.name} "
                     f"({_describe(*ours)})")
    if "classifier.weight" in wrong:
        got, want = tensors["classifier.weight"].shape[0], expected["classifier.weight"].shape[0]
        notes.append(f"the weights have {got} classes, the model {want}: build it with "
                     f"num_classes={got}, or pass ignore_classifier=True to keep the model's "
                     f"own classifier")
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches, e.g. " + _examples(
            wrong, lambda k: f"{k} <- {origin[k]}: weights {tuple(tensors[k].shape)} vs model "
                             f"{tuple(expected[k].shape)}"))
    if missing:
        parts.append(f"{len(missing)} model keys missing from the weights, e.g. "
                     + _examples(missing, lambda k: f"{k} {tuple(expected[k].shape)}"))
    if extra:
        parts.append(f"{len(extra)} unexpected keys, e.g. " + _examples(extra, str))
    return (f"cannot load {fmt.name} weights into {model.spec.name} ({model.num_classes} "
            f"classes): " + "; ".join(notes + parts))


def _check_eps(fmt: _Format, variant: str | None, model: nn.Module) -> None:
    tf = fmt.tf_eps(variant)
    if tf is None:
        return
    want = TF_EPS if tf else TORCH_EPS
    have = {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    if have != {want}:
        who = f"{fmt.name} efficientnet_{variant}" if variant else fmt.name
        raise ValueError(f"{who} uses BatchNorm eps {want:g} but the model has eps "
                         f"{', '.join(f'{e:g}' for e in sorted(have))}: build it with "
                         f"create_model(..., bn={'tf' if tf else 'torch'!r}) to get the "
                         f"same outputs")


# ---- the entry point -------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightsInfo:
    """What a model must be built with to take some weights (see `weights_info`)."""
    source: str          # the format: effscale, torchvision, timm or lukemelas
    variant: str | None  # b0..b7 when the block count and head width match one
    in_chans: int        # the stem conv's input channels (ImageNet weights: 3)
    bn: str | None       # "tf" (BatchNorm eps 1e-3), "torch" (1e-5), None: the format can't say


def weights_info(weights: str | Path | Mapping[str, torch.Tensor]) -> WeightsInfo:
    """The format, variant, input channels and BatchNorm convention of weights (a file or a
    state dict), read from the keys and shapes alone: build the model with `in_chans` and
    `bn` (`create_model(..., in_chans=info.in_chans, bn=info.bn or "torch")`) to load them."""
    if isinstance(weights, (str, Path)):
        where = str(weights)
        state, _ = _read_file(Path(weights))
    else:
        where = "the state dict"
        state, _ = _unwrap(weights, where)
    _check_tensors(state, where)
    state = _strip_wrappers(state)
    fmt = _detect(state, None, where)
    layout = _Layout(_prefixes(state), len(B0_STAGES), ())  # stem and head need no blocks
    variant = _variant_of(*_shape_of(state, fmt, _translate(state, fmt, layout)[0]))
    tf = fmt.tf_eps(variant)
    return WeightsInfo(fmt.name, variant, int(state[fmt.marker].shape[1]),  # marker: stem conv
                       None if tf is None else "tf" if tf else "torch")


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, torch.Tensor], *,
                 source: str | None = None, ignore_classifier: bool = False) -> nn.Module:
    """Load torchvision / timm / lukemelas / effscale weights into `model`, in place.

    `weights` is a state dict or a file of one (.safetensors, or .pth/.pt read with
    weights_only). `source` names the format when detection should be checked or when the
    weights are timm's tf_efficientnet_* (refused: TF padding, see the module docstring).
    `ignore_classifier=True` keeps the model's classifier (fine-tuning on other classes).
    Raises ValueError naming the keys and shapes that disagree. Returns `model`.
    """
    hints = [source or ""]
    if isinstance(weights, (str, Path)):
        where = str(weights)
        state, arch = _read_file(Path(weights))
        hints += [where, arch or ""]  # the whole path: hub caches name the model in a folder
    elif isinstance(weights, Mapping):
        where = "the state dict"
        state, arch = _unwrap(weights, where)
        hints.append(arch or "")
    else:
        raise ValueError(f"weights must be a path or a state dict, got {type(weights).__name__}")
    _refuse_tf_padding(hints)
    _check_tensors(state, where)
    state = _strip_wrappers(state)
    fmt = _detect(state, source, where)

    layout = _layout(state, model)
    tensors, origin, unknown = _translate(state, fmt, layout)

    def model_keeps(key: str) -> bool:  # entries the weights need not provide
        return key.endswith("num_batches_tracked") or (
            ignore_classifier and key.startswith("classifier."))

    if ignore_classifier:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    source_shape = _shape_of(state, fmt, tensors)
    message = _mismatch_message(fmt, model, tensors, origin, unknown, source_shape, model_keeps)
    if message:
        raise ValueError(message)
    _check_eps(fmt, _variant_of(*source_shape), model)

    current = model.state_dict()
    kept = {k: current[k] for k in current if k not in tensors}  # all pass model_keeps
    model.load_state_dict({**kept, **tensors}, strict=True)
    if fmt.name == "lukemelas":
        warnings.warn("lukemelas EfficientNet pads TF-'same' (asymmetric at stride 2) and "
                      "effscale pads symmetrically: outputs match the source model only at "
                      "input sizes that are odd at every stride-2 layer (e.g. 225, not 224)",
                      stacklevel=2)
    return model
