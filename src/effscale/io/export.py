"""ONNX export of an EfficientNet given as a model, a model name or a checkpoint.

Uses torch.onnx's torch.export-based exporter (`dynamo=True`, the default since torch 2.9; the
TorchScript one is deprecated). It needs the `onnx` and `onnxscript` packages, and the check
against PyTorch needs `onnxruntime`: all three come with `pip install 'effscale[onnx]'`.

The file is written atomically, and the check runs on the temporary file before it is renamed
into place, so a failed export or a failed check leaves no file behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model_file, model_meta
from .files import atomic_write
from ..model.net import EfficientNet, create_model

INPUT, OUTPUT = "images", "logits"
TRACE_BATCH = 2    # torch.export specialises a size-1 dimension, so a dynamic batch traces at 2
CHECK_BATCH = 3    # differs from TRACE_BATCH, so the check proves the batch axis is dynamic
TOLERANCE = 1e-4   # max |onnxruntime - PyTorch|, relative to the logits' scale when that is > 1
EXTRA = "pip install 'effscale[onnx]'"
MIN_OPSET = 18


@dataclass(frozen=True)
class Export:
    path: Path
    model: str
    resolution: int
    batch: int | None        # None: dynamic batch axis
    opset: int
    bytes: int
    max_abs_diff: float | None  # onnxruntime vs PyTorch on a random batch; None: not checked


def _require(*modules: str) -> None:
    missing = []
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {EXTRA}")


def resolve_model(model_or_name_or_checkpoint, *, num_classes: int = 1000,
                  bn: str = "torch") -> tuple[nn.Module, dict]:
    """(model, metadata) from a model, a checkpoint file or run directory, or a model name
    (built with random weights, `num_classes` and `bn`)."""
    source = model_or_name_or_checkpoint
    if isinstance(source, nn.Module):
        meta = model_meta(source) if isinstance(source, EfficientNet) else {}
        return source, meta
    if isinstance(source, Path) or Path(str(source)).exists():
        return load_model_file(source)
    try:
        model = create_model(str(source), num_classes, bn=bn)
    except ValueError as exc:
        if any(mark in str(source) for mark in ("/", "\\", ".safetensors")):
            raise FileNotFoundError(f"no such checkpoint: {source}") from None
        raise ValueError(f"{source!r} is neither a checkpoint nor a model name ({exc})") from None
    return model, model_meta(model, weights="random init")


def _export_program(model: nn.Module, example: torch.Tensor, dynamic: bool,
                    opset: int | None):
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its passes
        return torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                 input_names=[INPUT], output_names=[OUTPUT],
                                 dynamic_shapes=dynamic_shapes, opset_version=opset)


def _add_metadata(path: str, meta: dict) -> int:
    """Store effscale's metadata (model name, classes, normalisation...) in the ONNX file, so a
    deployment knows how to preprocess; return the file's opset."""
    import onnx

    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "effscale", json.dumps(meta, default=str)
    onnx.save(proto, path)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _max_abs_diff(path: str, model: nn.Module, example: torch.Tensor) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT], {INPUT: example.numpy()})
    with torch.no_grad():
        expected = model(example)
    diff = float((torch.from_numpy(got) - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not diff <= TOLERANCE * scale:  # `not <=` also catches NaN
        raise ValueError(f"onnxruntime's logits differ from PyTorch's by {diff:.3g} "
                         f"(allowed {TOLERANCE * scale:.3g}); the ONNX file was not written")
    return diff


def export_onnx(model_or_name_or_checkpoint, path: str | Path, *, batch: int | None = None,
                resolution: int | None = None, opset: int | None = None,
                check: bool = True, meta: dict | None = None) -> Export:
    """Write an ONNX file of a model, a model name (random weights) or a checkpoint.

    batch=None exports a dynamic batch axis; an int fixes it. The input is float32
    (N, C, R, R), normalised as in training, R the model's resolution unless given. With
    check=True, onnxruntime runs the file on a random batch and must match PyTorch within
    1e-4 (relative to the logits' scale when that exceeds 1) before the file is kept.
    The file's metadata_props["effscale"] holds the model's metadata (name, classes, and for
    a checkpoint its dataset, class names, mean and std), updated by `meta`.
    """
    _require("onnx", "onnxscript", *(["onnxruntime"] if check else []))
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the torch.export-based ONNX exporter writes opset "
                         f"{MIN_OPSET} or newer")
    source, found = resolve_model(model_or_name_or_checkpoint)
    meta = {**found, **(meta or {})}
    # A float32 CPU copy in eval mode: the caller's model keeps its device, dtype and mode.
    model = copy.deepcopy(source).to("cpu", torch.float32).eval()
    size = resolution or getattr(getattr(model, "spec", None), "resolution", None)
    if not size or size < 1:
        raise ValueError("resolution unknown: pass resolution= for a model without a spec")
    channels = getattr(model, "in_chans", 3)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(batch or TRACE_BATCH, channels, size, size, generator=gen)
    checked = torch.randn(batch or CHECK_BATCH, channels, size, size, generator=gen)
    program = _export_program(model, example, dynamic=batch is None, opset=opset)

    result = {}

    def write(tmp: str) -> None:
        program.save(tmp)
        result["opset"] = _add_metadata(tmp, dict(meta, resolution=size, input=INPUT,
                                                  output=OUTPUT))
        result["diff"] = _max_abs_diff(tmp, model, checked) if check else None
        result["bytes"] = Path(tmp).stat().st_size

    atomic_write(path, write)
    return Export(Path(path), meta.get("model", type(model).__name__), size, batch,
                  result["opset"], result["bytes"], result["diff"])
