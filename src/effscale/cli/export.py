"""`effscale export`: a model name or checkpoint to an ONNX file, checked with onnxruntime."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "export", help="export a model or checkpoint to ONNX",
        description="Export a checkpoint (model file or run directory) or a model name (random "
                    "weights, or --weights from torchvision/timm/lukemelas) to ONNX, then check "
                    "onnxruntime's logits against PyTorch's.")
    p.add_argument("model", metavar="NAME_OR_CHECKPOINT",
                   help="checkpoint file, run directory, or a model name such as b0 or b0@phi=1")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx",
                   help="file to write; an existing .onnx file there is replaced, anything "
                        "else (an input, another kind of file, a directory) is refused")
    p.add_argument("--batch", type=int, metavar="N",
                   help="fix the batch size to N (default: a dynamic batch axis)")
    p.add_argument("--resolution", type=int, help="input size (default: the model's own)")
    p.add_argument("--opset", type=int, help="ONNX opset, 18 or newer (default: the exporter's)")
    p.add_argument("--weights", metavar="FILE",
                   help="with a model name: load these torchvision/timm/lukemelas/effscale "
                        "weights first (see effscale.load_weights)")
    p.add_argument("--classes", type=int, default=1000,
                   help="with a model name: classifier size (default 1000)")
    p.add_argument("--bn", choices=("torch", "tf"), default="torch",
                   help="with a model name: BatchNorm eps 1e-5 (torch) or 1e-3 (tf: needed for "
                        "torchvision B5-B7 and lukemelas weights)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    return p


def _model(args):
    """(model, metadata): the checkpoint's, or one built from the name, --weights loaded."""
    from ..io.export import resolve_model

    is_checkpoint = Path(args.model).exists()
    if is_checkpoint and args.weights:
        raise ValueError("--weights applies to a model name, not to a checkpoint")
    if args.classes < 1:
        raise ValueError(f"--classes must be >= 1, got {args.classes}")
    model, meta = resolve_model(args.model, num_classes=args.classes, bn=args.bn)
    if args.weights:
        from ..io.weights import load_weights
        load_weights(model, args.weights)
        meta = dict(meta, weights=str(args.weights))
    return model, meta


def check_onnx_path(args) -> None:
    """--onnx must not be an input (the checkpoint, a run directory's model files, --weights)
    nor an existing file of another kind; an old .onnx may be replaced."""
    from ..io.files import check_output, checkpoint_inputs
    inputs = checkpoint_inputs([args.model, args.weights])
    check_output(args.onnx, suffixes=(".onnx",), kinds=(None,), inputs=inputs, flag="--onnx")


def run(args) -> int:
    from ..io.export import export_onnx

    check_onnx_path(args)
    try:
        model, meta = _model(args)
        result = export_onnx(model, args.onnx, batch=args.batch, resolution=args.resolution,
                             opset=args.opset, check=not args.no_check, meta=meta)
    except ImportError as exc:  # a missing optional dependency is a usage problem here
        raise ValueError(str(exc)) from None
    batch = "dynamic" if result.batch is None else str(result.batch)
    print(f"wrote {result.path} ({result.model}, {result.resolution} px, batch {batch}, "
          f"opset {result.opset}, {result.bytes / 2**20:.1f} MiB)")
    if meta.get("weights") == "random init":
        print("note: random weights (give a checkpoint, or --weights, for trained ones)")
    if result.max_abs_diff is not None:
        print(f"onnxruntime vs PyTorch: max |logit difference| {result.max_abs_diff:.2g}")
    return 0
